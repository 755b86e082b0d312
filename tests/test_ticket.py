"""Tickets: finding per-layer keep ratios, their files, overlap, plot, and use in a config."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import partial_lora
from partial_lora import PartialLoraConfig
from partial_lora.budget import adapter_parameters
from partial_lora.ticket import (
    LayerTicket, Provenance, Ticket, TicketFileError, find_ticket, plot_keep_ratios, scores_path, ticket_overlap,
)
from partial_lora.ticket.metrics import get_metric, required_score

from conftest import tiny_bert, tiny_llama

TARGETS = ["a", "low", "b"]


class LowRankNet(nn.Module):
    """x [B, 16] -> a -> relu -> (+ low, whose weight is exactly rank 3) -> b -> relu -> head [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.low = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = h + self.low(h)
        return self.head(torch.relu(self.b(h)))


def low_rank_task(seed: int = 0, examples: int = 96) -> tuple[LowRankNet, list[dict]]:
    """The net and labelled batches (labels: the net's own predictions, so its head is "trained").

    ``low``'s weight is rank 3 with its three output directions carrying equal energy on the
    data, so its task-aware rank is exactly 3 at any energy fraction above 2/3.
    """
    torch.manual_seed(seed)
    net = LowRankNet().eval()
    x = torch.randn(examples, 16)
    with torch.no_grad():
        hidden = torch.relu(net.a(x))
        values, vectors = torch.linalg.eigh(hidden.T @ hidden / examples)
        directions = torch.linalg.qr(torch.randn(32, 3))[0]
        net.low.weight.copy_(3.0 * directions @ torch.diag(values[-3:].rsqrt()) @ vectors[:, -3:].T)
        logits = net(x)
        net.head.bias.sub_(logits.mean(0))  # centre the logits: more even classes
        labels = net(x).argmax(1)
    return net, [{"x": x[i:i + 32], "labels": labels[i:i + 32]} for i in range(0, examples, 32)]


def svd_ticket(threshold: float = 0.9, **kwargs) -> Ticket:
    net, batches = low_rank_task()
    return find_ticket(net, batches, target_modules=TARGETS, threshold=threshold, progress=False, **kwargs)


def assert_valid(ticket: Ticket, model: nn.Module) -> None:
    modules = dict(model.named_modules())
    for name, layer in ticket.layers.items():
        weight = modules[name].weight
        assert layer.shape == (weight.shape[0], weight.shape[1])
        assert 0.0 < layer.keep_ratio <= 1.0
        assert 1 <= layer.k <= min(layer.shape)
        rows, columns = ticket.scores[name]
        assert rows.shape == (layer.shape[0],) and columns.shape == (layer.shape[1],)
        assert (rows >= 0).all() and (columns >= 0).all() and rows.sum() > 0


# -- the SVD ticket -----------------------------------------------------------------------
def test_svd_ticket_gives_a_rank_3_layer_k_3_and_the_others_more():
    ticket = svd_ticket()
    assert ticket.layers["low"].k == 3
    assert ticket.layers["low"].keep_ratio == pytest.approx(3 / 32)
    assert ticket.layers["a"].k > 3 and ticket.layers["b"].k > 3
    p = ticket.provenance
    assert p.method == "svd" and p.head == "own" and p.baseline_score == 1.0
    assert p.final_f >= 0.9 and p.final_score >= p.required_score
    assert 1 <= p.forward_equivalents <= 10


def test_higher_threshold_never_gives_smaller_ratios():
    tickets = [svd_ticket(tau) for tau in (0.5, 0.7, 0.9, 0.99, 1.0)]
    for lower, higher in zip(tickets, tickets[1:]):
        for name in TARGETS:
            assert higher.layers[name].keep_ratio >= lower.layers[name].keep_ratio


def test_same_seed_same_ticket_and_the_model_is_left_unchanged():
    net, batches = low_rank_task()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    first = find_ticket(net, batches, target_modules=TARGETS, seed=3, progress=False)
    second = find_ticket(net, batches, target_modules=TARGETS, seed=3, progress=False)
    assert first.fingerprint() == second.fingerprint()
    for name in TARGETS:
        assert torch.equal(first.scores[name][0], second.scores[name][0])
        assert torch.equal(first.scores[name][1], second.scores[name][1])
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net._forward_hooks and not net.a._forward_hooks and not net.a._forward_pre_hooks


def test_layerwise_ablation_mode_runs_and_costs_more_passes():
    joint = svd_ticket()
    layerwise = svd_ticket(method="svd-layerwise")
    assert layerwise.method == "svd-layerwise" and layerwise.layers["low"].k <= 3
    assert layerwise.provenance.forward_equivalents > joint.provenance.forward_equivalents


@pytest.mark.parametrize("method", ["snip", "imp"])
def test_snip_and_imp_give_valid_tickets(method):
    net, batches = low_rank_task()
    ticket = find_ticket(net, batches, target_modules=TARGETS, method=method, progress=False)
    assert ticket.method == method
    assert_valid(ticket, net)
    assert ticket.provenance.forward_equivalents >= (3 if method == "snip" else 2)


def test_snip_ratio_is_the_square_root_of_the_density_at_the_saliency_mass():
    from partial_lora.ticket.snip import density_at_mass

    saliency = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # total 10
    assert density_at_mass(saliency, 0.7) == 0.5  # 4 + 3 reach 70 %
    assert density_at_mass(saliency, 0.71) == 0.75
    assert density_at_mass(torch.zeros(2, 2), 0.9) == 0.25


def test_uniform_ticket_has_one_ratio_and_needs_no_data():
    net, _ = low_rank_task()
    ticket = find_ticket(net, None, target_modules=TARGETS, method="uniform", ratio=0.25)
    assert set(ticket.keep_ratios().values()) == {0.25}
    assert_valid(ticket, net)
    with pytest.raises(ValueError, match="ratio"):
        find_ticket(net, None, target_modules=TARGETS, method="uniform")


# -- files --------------------------------------------------------------------------------
def test_json_and_score_sidecar_round_trip_exactly(tmp_path):
    ticket = svd_ticket()
    path = ticket.save(tmp_path / "ticket.json")
    assert scores_path(path) == tmp_path / "ticket.scores.safetensors" and scores_path(path).is_file()
    document = json.loads(path.read_text())
    assert set(document["layers"]["low"]) == {"keep_ratio", "k", "shape"}
    assert document["provenance"]["method"] == "svd"
    loaded = Ticket.load(path)
    assert loaded.to_dict() == ticket.to_dict()
    assert loaded.fingerprint() == ticket.fingerprint()
    for name, (rows, columns) in ticket.scores.items():
        assert torch.equal(loaded.scores[name][0], rows) and torch.equal(loaded.scores[name][1], columns)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_ticket_without_scores_saves_no_sidecar(tmp_path):
    ticket = Ticket({"layer": LayerTicket(0.5, 2, (4, 6))}, Provenance(method="uniform", threshold=0.5))
    path = ticket.save(tmp_path / "t.json")
    assert not scores_path(path).exists()
    assert Ticket.load(path).keep_ratios() == {"layer": 0.5}


def _edit(change):
    def damage(text: str) -> str:
        document = json.loads(text)
        change(document)
        return json.dumps(document)

    return damage


@pytest.mark.parametrize("damage, words", [
    (lambda text: text[: len(text) // 2], "JSON is damaged"),
    (lambda text: "[1, 2]", "expected a JSON object"),
    (_edit(lambda d: d["layers"]["a"].update(keep_ratio=7.0)), "keep_ratio=7.0"),
    (_edit(lambda d: d["layers"]["a"].pop("shape")), "exactly keep_ratio, k and shape"),
    (_edit(lambda d: d.update(layers={})), "non-empty"),
    (_edit(lambda d: d.update(format="other/9")), "format"),
    (_edit(lambda d: d["provenance"].update(colour="red")), "unknown provenance fields"),
])
def test_damaged_ticket_json_is_refused_clearly(tmp_path, damage, words):
    path = svd_ticket().save(tmp_path / "ticket.json")
    path.write_text(damage(path.read_text()))
    with pytest.raises(TicketFileError, match="not a valid ticket") as info:
        Ticket.load(path)
    assert words in str(info.value)


def test_damaged_or_missing_sidecar_is_refused(tmp_path):
    path = svd_ticket().save(tmp_path / "ticket.json")
    sidecar = scores_path(path)
    blob = bytearray(sidecar.read_bytes())
    blob[-1] ^= 0xFF
    sidecar.write_bytes(bytes(blob))
    with pytest.raises(TicketFileError, match="does not match"):
        Ticket.load(path)
    sidecar.unlink()
    with pytest.raises(TicketFileError, match="missing"):
        Ticket.load(path)
    with pytest.raises(FileNotFoundError, match="no ticket"):
        Ticket.load(tmp_path / "absent.json")


def test_layer_ticket_validates_its_values():
    with pytest.raises(ValueError, match="keep_ratio"):
        LayerTicket(0.0, 1, (4, 4))
    with pytest.raises(ValueError, match="k=9"):
        LayerTicket(0.5, 9, (4, 8))
    with pytest.raises(ValueError, match="row_scores"):
        LayerTicket(0.5, 2, (4, 8), torch.ones(5), torch.ones(8))


# -- using a ticket -----------------------------------------------------------------------
@pytest.mark.parametrize("selection", ["targeted", "stochastic", "random"])
def test_from_ticket_builds_a_config_that_apply_accepts(selection):
    ticket = svd_ticket()
    config = PartialLoraConfig.from_ticket(ticket, r=2, selection=selection)
    net, batches = low_rank_task()
    partial_lora.apply(net, config, scores=ticket.scores)
    layers = partial_lora.adapter_layers(net)
    assert set(layers) == set(TARGETS)
    low = layers["low"]
    assert low.lora_B.shape[0] == 3 and low.lora_A.shape[1] == 3  # ceil(3/32 * 32)
    if selection == "targeted":
        expected = torch.sort(torch.sort(ticket.scores["low"][0], descending=True, stable=True).indices[:3]).values
        assert torch.equal(low.lora_rows.cpu(), expected)
    net(batches[0]["x"])


def test_budget_mode_meets_the_budget():
    ticket = svd_ticket()
    budget = 150
    config = PartialLoraConfig.from_ticket(ticket, budget=budget, r=2)
    total = sum(adapter_parameters(config.keep_ratio_for(n), s, 2) for n, s in ticket.layer_shapes().items())
    assert total <= budget
    net, _ = low_rank_task()
    partial_lora.apply(net, config)
    assert partial_lora.trainable_parameters(net) == total


def test_overlap_of_a_ticket_with_itself_is_one_and_with_another_method_less():
    ticket = svd_ticket()
    same = ticket_overlap(ticket, ticket, top=0.25)
    assert same["mean"] == {"rows": 1.0, "columns": 1.0}
    assert all(v == {"rows": 1.0, "columns": 1.0} for v in same["layers"].values())
    net, batches = low_rank_task()
    snip = find_ticket(net, batches, target_modules=TARGETS, method="snip", progress=False)
    other = ticket_overlap(ticket, snip, top=4)
    assert set(other["layers"]) == set(TARGETS)
    assert all(0.0 <= v["rows"] <= 1.0 for v in other["layers"].values())
    assert other["mean"]["rows"] < 1.0
    json.dumps(other)
    with pytest.raises(ValueError, match="top"):
        ticket_overlap(ticket, ticket, top=1.5)


def test_plot_keep_ratios_writes_a_png(tmp_path):
    ticket = svd_ticket()
    single = plot_keep_ratios(ticket, tmp_path / "one.png")
    several = plot_keep_ratios({"tau 0.7": svd_ticket(0.7), "tau 0.9": ticket}, tmp_path / "two" / "plot.png")
    for path in (single, several):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bars_can_be_shown(capsys):
    net, batches = low_rank_task()
    find_ticket(net, batches, target_modules=TARGETS, progress=True)
    assert "recording" in capsys.readouterr().err


def test_recording_skips_padding_and_shares_one_matrix_for_query_key_value():
    from partial_lora.ticket.recording import InputRecorder
    from partial_lora.surgery import find_target_modules

    model = tiny_bert()
    targets = find_target_modules(model, ["query", "key", "value", "intermediate.dense"])
    batches = bert_few_shot()
    with InputRecorder(targets) as recorder, torch.no_grad():
        for batch in batches:
            recorder.begin_batch(batch["attention_mask"])
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    query, key = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key"
    assert recorder.owner[key] == query and len(recorder.sums) == 4
    assert recorder.counts[query] == sum(int(b["attention_mask"].sum()) for b in batches)
    assert torch.equal(recorder.covariance(key), recorder.covariance(query))
    assert not model.bert.encoder.layer[0].attention.self.query._forward_pre_hooks


# -- heads --------------------------------------------------------------------------------
def bert_few_shot(classes: int = 3, per_class: int = 6, length: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    ids = torch.randint(5, 100, (labels.numel(), length), generator=generator)
    ids[:, 1] = labels + 1  # a token that reveals the class, so a probe can learn it
    mask = torch.ones_like(ids)
    mask[::4, -2:] = 0
    return [{"input_ids": ids[i:i + 6], "attention_mask": mask[i:i + 6], "labels": labels[i:i + 6]}
            for i in range(0, labels.numel(), 6)]


def test_new_head_is_scored_with_probes_cross_fitted_on_two_halves():
    net, batches = low_rank_task()
    torch.manual_seed(5)
    net.head.reset_parameters()  # the labels now come from a head the model no longer has
    net.partial_lora_new_modules = ["head"]
    ticket = find_ticket(net, batches, target_modules=TARGETS, progress=False)
    p = ticket.provenance
    assert p.head == "probe" and not p.notes
    assert p.floor < p.required_score <= p.baseline_score < 1.0  # held-out: not saturated
    assert ticket.layers["low"].k == 3
    assert_valid(ticket, net)


def test_probe_on_a_tiny_bert_and_the_fallback_when_it_is_at_chance():
    model = tiny_bert(num_labels=3)
    model.partial_lora_new_modules = ["classifier"]
    with pytest.warns(UserWarning, match="not above the chance floor"):
        ticket = find_ticket(model, bert_few_shot(), target_modules=["query", "value"], progress=False)
    p = ticket.provenance
    assert p.head == "probe" and len(ticket.layers) == 4
    assert p.floor == pytest.approx(1 / 3)  # 3 held-out examples per class
    assert p.baseline_score <= p.floor and "not above the chance floor" in p.notes[0]  # random tiny BERT
    assert_valid(ticket, model)


@pytest.mark.filterwarnings("ignore:find_ticket")  # a random tiny Llama is at chance
def test_probe_stands_in_for_a_head_that_the_model_pools_after():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=3, pad_token_id=0)).eval()
    ticket = find_ticket(model, bert_few_shot(), target_modules=["q_proj", "v_proj"], head_is_new=True,
                         progress=False)
    assert ticket.provenance.head == "probe" and "score" not in ticket.layers


def test_zero_shot_head_on_a_tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=16)).eval()
    prompts = {"input_ids": torch.randint(2, 64, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.long)}
    pixels = torch.randn(24, 3, 16, 16)
    from partial_lora.ticket.heads import ZeroShotHead

    with torch.no_grad():
        labels = ZeroShotHead(model, prompts).logits(model, {"pixel_values": pixels}).argmax(1)
    batches = [{"pixel_values": pixels[i:i + 12], "labels": labels[i:i + 12]} for i in (0, 12)]
    ticket = find_ticket(model, batches, target_modules=["q_proj", "v_proj"], class_prompts=prompts, progress=False)
    assert ticket.provenance.head == "zero-shot" and ticket.provenance.baseline_score == 1.0
    assert any(name.startswith("text_model") for name in ticket.layers)
    assert any(name.startswith("vision_model") for name in ticket.layers)
    assert_valid(ticket, model)
    with pytest.raises(ValueError, match="class_prompts"):
        find_ticket(model, batches, target_modules=["q_proj"], progress=False)


def test_causal_lm_ticket_with_negative_loss():
    model = tiny_llama()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 120, (8, 12), generator=generator)
    labels = ids.clone()
    labels[:, :6] = -100  # score the answer half only
    batches = [{"input_ids": ids[i:i + 4], "labels": labels[i:i + 4]} for i in (0, 4)]
    ticket = find_ticket(model, batches, target_modules=["q_proj", "k_proj", "v_proj"], metric="neg-loss",
                         progress=False)
    p = ticket.provenance
    assert p.metric == "neg_loss" and p.head == "own" and p.floor == pytest.approx(-math.log(120))
    assert p.baseline_score < 0 and p.shots == 8
    assert ticket.layers["model.layers.0.self_attn.k_proj"].shape == (24, 48)
    assert_valid(ticket, model)
    with pytest.warns(UserWarning, match="chance floor 0"):  # nothing exactly right: at chance
        exact = find_ticket(model, batches, target_modules=["v_proj"], metric="exact_match", progress=False)
    assert exact.provenance.floor == 0.0


# -- metrics and thresholds ---------------------------------------------------------------
def test_threshold_rules_relative_absolute_and_negative_baselines():
    assert required_score(0.9, 0.2, 0.9, "relative")[0] == pytest.approx(0.2 + 0.9 * 0.7)
    assert required_score(0.9, 0.2, 0.9, "absolute")[0] == pytest.approx(0.81)
    assert required_score(-2.0, -4.0, 0.5, "relative")[0] == pytest.approx(-3.0)
    assert required_score(-2.0, -4.0, 0.8, "absolute")[0] == pytest.approx(-2.5)  # loss may grow to 2 / 0.8
    required, note = required_score(0.2, 0.25, 0.9, "relative")
    assert required == pytest.approx(0.18) and "not above the chance floor" in note


def test_metric_floors_and_a_callable_metric():
    from partial_lora.ticket.outputs import Outputs

    labels = torch.tensor([0, 0, 0, 1])
    out = Outputs("classification", labels=labels, logits=torch.tensor([[1., 0], [1, 0], [0, 1], [0, 1]]))
    assert get_metric("accuracy").score(out) == 0.75 and get_metric("accuracy").floor(out) == 0.75
    assert get_metric("macro-f1").floor(out) == pytest.approx((6 / 7) / 2)
    assert get_metric("neg_loss").floor(out) == pytest.approx(-math.log(2))
    errors = get_metric(lambda logits, y: -float((logits.argmax(1) != y).sum()))
    assert errors.score(out) == -1.0 and errors.floor(out) == -1.0


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    (dict(metric="bleu"), "known metrics: accuracy, macro_f1, exact_match, neg_loss"),
    (dict(threshold=0.0), "(0, 1]"),
    (dict(threshold=1.5), "(0, 1]"),
    (dict(method="magic"), "svd, svd-layerwise, snip, imp, uniform"),
    (dict(threshold_mode="percent"), "relative, absolute"),
    (dict(head="best"), "auto, own, probe, zero-shot"),
    (dict(target_modules=["nothing_here"]), "matched no adaptable module"),
    (dict(head="zero-shot"), "CLIP-like"),
])
def test_bad_arguments_raise_clear_errors(kwargs, words):
    net, batches = low_rank_task()
    arguments = dict(target_modules=TARGETS, progress=False) | kwargs
    with pytest.raises(ValueError) as info:
        find_ticket(net, batches, **arguments)
    assert words in str(info.value)


def test_data_without_labels_is_refused():
    net, batches = low_rank_task()
    with pytest.raises(ValueError, match="has no 'labels'"):
        find_ticket(net, [{"x": batches[0]["x"]}], target_modules=TARGETS, progress=False)
    with pytest.raises(ValueError, match="empty"):
        find_ticket(net, [], target_modules=TARGETS, progress=False)
    with pytest.raises(ValueError, match="dict of tensors"):
        find_ticket(net, [batches[0]["x"]], target_modules=TARGETS, progress=False)


def test_own_head_refused_when_the_head_is_new_and_probing_is_off():
    model = tiny_bert(num_labels=3)
    model.partial_lora_new_modules = ["classifier"]
    with pytest.raises(ValueError, match="is new .* head='probe'"):
        find_ticket(model, bert_few_shot(), target_modules=["query"], head="own", progress=False)
    plain = tiny_bert(num_labels=3)
    with pytest.raises(ValueError, match="head_is_new=True"):
        find_ticket(plain, bert_few_shot(), target_modules=["query"], head="own", head_is_new=True, progress=False)


def test_metric_that_does_not_fit_the_task_is_refused():
    model = tiny_llama()
    ids = torch.randint(0, 120, (2, 8))
    with pytest.raises(ValueError, match="macro_f1.*causal-lm"):
        find_ticket(model, [{"input_ids": ids, "labels": ids}], target_modules=["q_proj"], metric="macro_f1",
                    progress=False)
