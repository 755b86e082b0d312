"""Every comparison method builds by name, trains only its own parameters, and saves."""

from __future__ import annotations

import re

import pytest
import torch
from peft import PeftModel

import partial_lora
from partial_lora.methods import (
    INIT_BATCHES,
    METHODS,
    MethodNotApplicable,
    build_method,
    matched_lora_rank,
    method_learning_rate,
    random_masking_rank,
    save_method,
    uniform_keep_ratio,
)
from partial_lora.methods.partial_adalora import adalora_layers

from conftest import CrashAfter, PlainSGD, classification_data, tiny_bert, tiny_llama, token_batch

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # PEFT's SHiRA

TARGETS = ["query", "key", "value"]
LAYERS = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in TARGETS]
RATIOS = {name: ratio for name, ratio in zip(LAYERS, [0.1, 0.3, 0.5, 0.2, 0.15, 0.7])}
R = 4
LORA_PER_LAYER = R * (32 + 32)
CLASSIFIER = 32 * 3 + 3


# Names of the parameters each method may train (the classifier is a module to save).
TRAINABLE = {
    "lora": r"lora_[AB]\.|classifier",
    "dora": r"lora_[AB]\.|lora_magnitude_vector|classifier",
    "adalora": r"lora_[ABE]\.|classifier",
    "vera": r"vera_lambda_[bd]|classifier",
    "random-masking": r"shira_weight|classifier",
    "lora-eva": r"lora_[AB]\.|classifier",
    "partial-lora": r"lora_[AB]$|classifier",
    "targeted": r"lora_[AB]$|classifier",
    "stochastic": r"lora_[AB]$|classifier",
    "uniform": r"lora_[AB]$|classifier",
    "partial-adalora": r"lora_[PEQ]$|classifier",
}


def scores(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.rand(32, generator=generator), torch.rand(32, generator=generator)) for name in LAYERS}


def build(name: str, **kw):
    kw.setdefault("total_steps", 10)
    if name in INIT_BATCHES:
        kw.setdefault("init_batches", [labelled_batch(seed) for seed in range(3)])
    return build_method(name, tiny_bert(), r=R, alpha=8, target_modules=TARGETS, modules_to_save=["classifier"],
                        keep_ratios=RATIOS, ticket_scores=scores(), seed=0, **kw)


def labelled_batch(seed: int = 0) -> dict:
    batch = token_batch(batch=4, seed=seed)
    batch["labels"] = torch.tensor([0, 1, 2, 1])
    return batch


def adapter_count(model) -> int:
    return partial_lora.trainable_parameters(model) - CLASSIFIER


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_one_step_changing_only_its_own_parameters(name):
    model, hooks = build(name)
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if name == "full":
        assert len(trainable) == len(before)
    else:
        assert trainable and all(re.search(TRAINABLE[name], n) for n in trainable), sorted(trainable)[:4]
    optimizer = PlainSGD(trainable.values(), lr=0.1)
    loss = model(**labelled_batch()).loss
    if hooks.extra_loss is not None:
        loss = loss + hooks.extra_loss(model, 1)
    loss.backward()
    optimizer.step()
    for callback in hooks.callbacks:
        callback.on_step_end(model, 1)
    optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    assert any(not re.search("classifier", n) for n in changed)


def test_trainable_parameter_counts_are_the_methods_own():
    names = ("lora", "dora", "partial-lora", "uniform", "random-masking")
    counts = {name: adapter_count(build(name)[0]) for name in names}
    assert counts["lora"] == 6 * LORA_PER_LAYER
    assert counts["dora"] == 6 * (LORA_PER_LAYER + 32)
    expected_partial = sum(R * 2 * -(-round(ratio * 32 * 1e6) // 10**6) for ratio in RATIOS.values())  # ceil
    assert counts["partial-lora"] == expected_partial < counts["lora"]
    assert counts["partial-lora"] - 6 * 2 * R <= counts["uniform"] <= counts["partial-lora"]
    masking_r = random_masking_rank(RATIOS, {n: (32, 32) for n in LAYERS}, R)
    assert counts["random-masking"] == masking_r * 64 * 6
    assert abs(counts["random-masking"] - counts["partial-lora"]) <= 64 * 6 / 2
    assert adapter_count(build("random-masking", masking_r=3)[0]) == 3 * 64 * 6
    assert adapter_count(build("random-masking", budget=800)[0]) == 2 * 64 * 6
    assert adapter_count(build("vera", vera_r=16)[0]) == 6 * (16 + 32)


def test_uniform_uses_one_ratio_with_the_tickets_total():
    shapes = {name: (32, 32) for name in LAYERS}
    shapes[LAYERS[0]] = (64, 32)
    ratio = uniform_keep_ratio(RATIOS, shapes, R)
    weighted_mean = sum(RATIOS[n] * sum(shapes[n]) for n in LAYERS) / sum(sum(s) for s in shapes.values())
    assert abs(ratio - weighted_mean) < 0.05
    model, _ = build("uniform")
    layers = partial_lora.adapter_layers(model).values()
    assert len({len(layer.lora_rows) for layer in layers}) == 1


def test_ticket_methods_pick_rows_by_their_rule_and_budget_rescales():
    random_rows = {n: l.lora_rows for n, l in partial_lora.adapter_layers(build("partial-lora")[0]).items()}
    targeted = partial_lora.adapter_layers(build("targeted")[0])
    for name, layer in targeted.items():
        row_scores = scores()[name][0]
        assert torch.equal(layer.lora_rows, torch.sort(torch.topk(row_scores, len(layer.lora_rows)).indices).values)
    assert any(not torch.equal(random_rows[n], targeted[n].lora_rows) for n in LAYERS)
    budgeted = build("partial-lora", budget=300)[0]
    assert adapter_count(budgeted) <= 300 < adapter_count(build("partial-lora")[0])


def test_unknown_names_options_and_missing_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown method 'qlora'.*known methods: full, lora"):
        build("qlora")
    with pytest.raises(TypeError, match="does not take option.*vera_r"):
        build("lora", vera_r=8)
    with pytest.raises(ValueError, match="needs total_steps"):
        build("adalora", total_steps=None)
    with pytest.raises(ValueError, match="needs ticket_scores"):
        build_method("targeted", tiny_bert(), r=R, target_modules=TARGETS, keep_ratios=RATIOS)
    with pytest.raises(ValueError, match="needs keep_ratios"):
        build_method("partial-lora", tiny_bert(), r=R, target_modules=TARGETS)
    with pytest.raises(ValueError, match="unknown method"):
        method_learning_rate("nope", 1e-3)


def test_adalora_callback_allocates_ranks_over_a_short_run():
    total = 6
    model, hooks = build("adalora", total_steps=total, tinit=0, tfinal=2)
    optimizer = PlainSGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(1, total + 1):
        model(**labelled_batch(step)).loss.backward()
        optimizer.step()
        for callback in hooks.callbacks:
            callback.on_step_end(model, step)
        optimizer.zero_grad()
    pattern = model.peft_config["default"].rank_pattern
    assert pattern and sum(sum(mask) for mask in pattern.values()) <= R * 6 < 6 * 6  # init_r = ceil(1.5 * 4)


def test_partial_adalora_hooks_drive_its_allocator_and_saving_leaves_it_intact(tmp_path):
    total = 6
    model, hooks = build("partial-adalora", total_steps=total, tinit=0, tfinal=2)
    optimizer = PlainSGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(1, total + 1):
        (model(**labelled_batch(step)).loss + hooks.extra_loss(model, step)).backward()
        optimizer.step()
        for callback in hooks.callbacks:
            callback.on_step_end(model, step)
        optimizer.zero_grad()
    assert sum(layer.active_rank for layer in adalora_layers(model).values()) == R * 6
    batch = token_batch()
    expected = model(**batch).logits
    size = save_method(model, "partial-adalora", tmp_path / "adapter")
    assert len(adalora_layers(model)) == 6 and size > 0
    loaded = partial_lora.load(tiny_bert(), tmp_path / "adapter")
    assert sum(layer.r for layer in partial_lora.adapter_layers(loaded).values()) == R * 6
    torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=1e-5)


def test_save_method_writes_natural_formats_and_reports_their_size(tmp_path):
    sizes = {}
    for name in ("full", "lora", "partial-lora", "random-masking"):
        model, _ = build(name)
        sizes[name] = save_method(model, name, tmp_path / name, metadata={"method": name})
        assert sizes[name] == max(p.stat().st_size for p in (tmp_path / name).glob("*.safetensors"))
    assert (tmp_path / "lora" / "training_metadata.json").is_file()
    assert sizes["partial-lora"] < sizes["lora"] < sizes["full"]


def test_random_masking_draws_its_own_pattern_per_layer_and_reloads_in_peft(tmp_path):
    model, _ = build("random-masking")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "shira_weight" in name:
                parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    queries = ("layer.0.attention.self.query", "layer.1.attention.self.query")
    layers = [module for name, module in model.named_modules() if name.endswith(queries)]
    first, second = (layer.shira_indices["default"] for layer in layers)
    assert not torch.equal(first, second)
    model.eval()
    batch = token_batch()
    expected = model(**batch).logits
    save_method(model, "random-masking", tmp_path / "masking")
    reloaded = PeftModel.from_pretrained(tiny_bert(), tmp_path / "masking").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-6)


def test_learning_rate_defaults_scale_with_the_method():
    base = 2e-3
    assert method_learning_rate("partial-lora", base) == method_learning_rate("lora", base) == base
    assert method_learning_rate("vera", base) > base and method_learning_rate("random-masking", base) > base
    assert method_learning_rate("full", base) < base
    assert all(method_learning_rate(name, base) > 0 for name in METHODS)


def test_partial_lora_layers_carry_a_keep_compensation_of_loras_parameters_over_theirs():
    model, _ = build_method("partial-lora", tiny_bert(), r=R, target_modules=TARGETS, keep_ratio=0.25)
    # 32 x 32 layers at keep 0.25 keep 8 rows and 8 columns: a quarter of LoRA's parameters
    layers = partial_lora.adapter_layers(model).values()
    assert layers and all(layer.multiplier == pytest.approx(4.0) for layer in layers)
    assert all(layer.scaling == pytest.approx(16.0 * 16 / R) for layer in layers)  # K^2 alpha / r, alpha = 16
    tiny, _ = build_method("partial-lora", tiny_bert(), r=R, target_modules=TARGETS, keep_ratio=0.01)
    assert all(layer.multiplier == pytest.approx(10.0) for layer in partial_lora.adapter_layers(tiny).values())
    dense, _ = build_method("partial-lora", tiny_bert(), r=R, target_modules=TARGETS, keep_ratio=1.0)
    assert all(layer.multiplier == 1.0 for layer in partial_lora.adapter_layers(dense).values())


# -- AdaLoRA's orthogonal regulariser -------------------------------------------------------
def peft_orthogonal_regulariser(model) -> torch.Tensor:
    """PEFT AdaLoRA's regulariser, written from its definition: mean over every lora_A / lora_B of
    ||G - I||_F, with the r x r Gram matrix (A A^T, B^T B)."""
    defects = []
    for name, parameter in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            gram = parameter @ parameter.T if "lora_A" in name else parameter.T @ parameter
            defects.append(torch.linalg.matrix_norm(gram - torch.eye(len(gram), dtype=gram.dtype)))
    return sum(defects) / len(defects)


def adalora_case(kind: str):
    """(base model, build_method arguments, one labelled batch) for the models the project trains."""
    if kind == "bert":
        return tiny_bert().double(), dict(target_modules=TARGETS, modules_to_save=["classifier"]), labelled_batch()
    if kind == "llama":
        batch = token_batch(batch=2, length=6, vocab=120)
        return tiny_llama().double(), dict(target_modules=["q_proj", "v_proj"]), {**batch, "labels": batch["input_ids"]}
    from partial_lora.models.efficientnet_lite import EfficientNetLite0

    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (EfficientNetLite0(num_classes=3).double(),
            dict(target_modules=r"_blocks\.1[45]\._project_conv", modules_to_save=["_fc"]),
            {"pixel_values": images, "labels": torch.tensor([0, 2])})


@pytest.mark.parametrize("kind", ["bert", "llama", "efficientnet"])
def test_adalora_training_loss_includes_pefts_orthogonal_regulariser(kind):
    base, targets, batch = adalora_case(kind)
    model, hooks = build_method("adalora", base, r=4, alpha=8, total_steps=10, orth_reg_weight=0.3, **targets)
    assert hooks.extra_loss is None  # PEFT's own forward adds it
    model.train()

    def loss(forward) -> torch.Tensor:
        torch.manual_seed(5)  # the same dropout masks in both passes
        return forward(**batch).loss

    regulariser = peft_orthogonal_regulariser(model)
    assert regulariser.item() > 0.1
    task_loss = loss(model.get_base_model())  # the wrapped model alone: the task's loss
    # (Llama computes its loss in float32 whatever the model's dtype.)
    atol = 1e-12 if task_loss.dtype == torch.float64 else 1e-6
    torch.testing.assert_close(loss(model) - task_loss, 0.3 * regulariser, rtol=0, atol=atol, check_dtype=False)
    loss(model).backward()  # the regulariser trains P and Q although E starts at zero
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n)
    model.eval()  # evaluation reports the task's loss, as for every other method
    torch.testing.assert_close(loss(model), loss(model.get_base_model()), rtol=0, atol=0)


# -- LoRA with EVA initialisation -------------------------------------------------------------
EVA_TARGETS = ["query", "key", "value", "output.dense"]  # 32 x 32, except output.dense: 32 x 64


def eva_batches() -> list[dict]:
    data = classification_data(32, seed=0)
    return [{name: tensor[start:start + 8] for name, tensor in data.items()} for start in range(0, 32, 8)]


def build_eva(**kw):
    kw.setdefault("init_batches", eva_batches())
    return build_method("lora-eva", tiny_bert(num_labels=2), r=8, alpha=16, target_modules=EVA_TARGETS,
                        modules_to_save=["classifier"], keep_ratio=0.25, seed=0, **kw)


def test_lora_eva_matches_the_partial_lora_count_and_redistributes_ranks():
    model, hooks = build_eva()
    partial, _ = build_method("partial-lora", tiny_bert(num_labels=2), r=8, alpha=16, target_modules=EVA_TARGETS,
                              modules_to_save=["classifier"], keep_ratio=0.25)
    layers = partial_lora.adapter_layers(partial)
    shapes = {name: (layer.out_features, layer.in_features) for name, layer in layers.items()}
    eva_r = matched_lora_rank({name: 0.25 for name in shapes}, shapes, 8)
    config = model.peft_config["default"]
    assert eva_r == 2 and config.r == eva_r and config.init_lora_weights == "eva"
    assert hooks.extra_loss is None and not hooks.callbacks
    assert config.lora_alpha == 16 * eva_r / 8  # alpha / r as for LoRA and the Partial-LoRA
    ranks = {name: config.rank_pattern.get(name, eva_r) for name in shapes}
    assert len(set(ranks.values())) > 1 and max(ranks.values()) <= round(2.0 * eva_r)  # rho = 2
    assert sum(ranks.values()) == eva_r * len(shapes)  # redistributed, not added
    head = 32 * 2 + 2
    eva_count = partial_lora.trainable_parameters(model) - head
    partial_count = partial_lora.trainable_parameters(partial) - head
    assert eva_count == sum(rank * sum(shapes[name]) for name, rank in ranks.items())
    assert abs(eva_count - partial_count) <= 0.1 * partial_count
    # EVA's A rows are the top input directions: orthonormal; B starts at zero.
    layer = model.get_submodule("base_model.model.bert.encoder.layer.0.attention.self.query")
    a = layer.lora_A["default"].weight
    torch.testing.assert_close(a @ a.T, torch.eye(len(a)), rtol=0, atol=1e-4)
    assert layer.lora_B["default"].weight.abs().sum() == 0


def test_lora_eva_trains_saves_and_reloads_in_peft(tmp_path):
    model, _ = build_eva()
    batches = eva_batches()
    model.train()
    optimizer = PlainSGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for step in range(3):
        model(**batches[step]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)
    model.eval()
    batch = token_batch()
    expected = model(**batch).logits
    save_method(model, "lora-eva", tmp_path / "eva")
    reloaded = PeftModel.from_pretrained(tiny_bert(num_labels=2), tmp_path / "eva").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-6)


def test_lora_eva_needs_init_batches_and_refuses_what_eva_cannot_adapt():
    with pytest.raises(ValueError, match="pass init_batches"):
        build_eva(init_batches=None)
    with pytest.raises(MethodNotApplicable, match="input directions"):
        build_eva(eva_r=20)  # round(2 * 20) = 40 directions of 32 input features
    with pytest.raises(MethodNotApplicable, match="did not converge"):  # 8 rows per batch, 2 * 5 = 10 directions
        build_method("lora-eva", tiny_bert(num_labels=2), r=8, target_modules=["pooler.dense"], eva_r=5,
                     init_batches=eva_batches())
    counts = {budget: build_eva(budget=budget)[0].peft_config["default"].r for budget in (704, 2100)}
    assert counts == {704: 1, 2100: 3}  # rank * sum(m + n) = rank * 704 nearest the budget


class _AllocatorSpy:
    """Records PEFT's smoothed importance after ``step`` (runs after the allocation callback)."""

    def __init__(self, peft_model, step: int) -> None:
        self.peft_model, self.step, self.seen = peft_model, step, None

    def on_step_end(self, model, step: int) -> None:
        if step == self.step:
            allocator = self.peft_model.base_model.rankallocator
            self.seen = {name: value.clone() for name, value in allocator.exp_avg_ipt.items()}


def test_a_resumed_peft_adalora_run_allocates_as_the_uninterrupted_one(tmp_path):
    """PEFT's importance averages and rank pattern travel in the checkpoints: a run resumed in the
    middle of the rank schedule carries the same importance history and ends with the same adapter."""
    from partial_lora.training import TensorBatches, TrainingConfig, train

    def run(folder, crash=None, resume=False):
        model, hooks = build_method("adalora", tiny_bert(num_labels=2), r=2, alpha=4, target_modules=TARGETS,
                                    modules_to_save=["classifier"], total_steps=10, tinit=2, tfinal=3)
        config = TrainingConfig(learning_rate=1e-2, epochs=2, cpu=True, progress=False, output_dir=str(folder),
                                checkpoint_every=1)
        spy = _AllocatorSpy(model, 6)
        callbacks = hooks.callbacks + [spy] + ([CrashAfter(crash)] if crash else [])
        train(model, TensorBatches(classification_data(40, seed=0), batch_size=8), config, resume=resume,
              extra_loss=hooks.extra_loss, callbacks=callbacks)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, model, spy.seen

    whole, whole_model, whole_importance = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", crash=5)  # between tinit and the final allocation (step 7)
    resumed, resumed_model, resumed_importance = run(tmp_path / "cut", resume=True)
    assert whole_importance and whole_importance.keys() == resumed_importance.keys()
    assert all(torch.equal(whole_importance[n], resumed_importance[n]) for n in whole_importance)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    final = whole_model.peft_config["default"].rank_pattern
    assert final and final == resumed_model.peft_config["default"].rank_pattern
