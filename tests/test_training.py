"""Training loop: learning, frozen base, exact resume, divergence, damaged checkpoints, DDP."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import partial_lora
from conftest import CrashAfter, classification_data, tiny_bert
from partial_lora.training import (
    CheckpointError,
    TensorBatches,
    TrainingConfig,
    TrainingDiverged,
    classification_scores,
    evaluate_classification,
    latest_checkpoint,
    read_checkpoint,
    train,
)
from partial_lora.training import checkpoint as checkpoint_module

ADAPTER = partial_lora.PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"])


def adapted_bert(dropout: float = 0.0):
    return partial_lora.apply(tiny_bert(num_labels=2), replace(ADAPTER, dropout=dropout))


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def quick_config(tmp_path: Path, **changes) -> TrainingConfig:
    settings = dict(learning_rate=1e-2, epochs=2, cpu=True, progress=False, output_dir=str(tmp_path), checkpoint_every=3)
    settings.update(changes)
    return TrainingConfig(**settings)


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["labels"])

    def __getitem__(self, index):
        return {k: v[index] for k, v in self.tensors.items()}


def folder_digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


# -- learning ----------------------------------------------------------------------------
def test_training_lowers_the_loss_and_raises_accuracy(tmp_path):
    model = adapted_bert()
    batches = TensorBatches(classification_data(192, seed=0), batch_size=16, seed=0)
    held_out = TensorBatches(classification_data(96, seed=1), batch_size=32, shuffle=False)
    before = evaluate_classification(model, held_out)
    result = train(model, batches, TrainingConfig(learning_rate=1e-2, epochs=3, cpu=True, progress=False,
                                                  warmup_ratio=0.1), eval_batches=held_out)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["eval_loss"] < before["loss"] - 0.1
    assert result.metrics["eval_accuracy"] >= 0.9 > before["accuracy"] + 0.2
    assert 0 <= result.metrics["eval_macro_f1"] <= 1
    assert result.steps == 36 and result.train_seconds > 0 and result.peak_rss_bytes > 10 * 2**20
    moments = 2 * partial_lora.trainable_parameters(model) * 4  # exp_avg + exp_avg_sq, float32
    assert moments <= result.optimizer_state_bytes <= moments + 64 * len(trainable_state(model))


def test_only_trainable_parameters_change():
    model = adapted_bert()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = trainable_state(model)
    train(model, TensorBatches(classification_data(64, seed=0), batch_size=16), TrainingConfig(
        learning_rate=1e-2, epochs=1, weight_decay=0.1, cpu=True, progress=False))
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in frozen.items())
    changed = [n for n, value in trainable.items() if not torch.equal(after[n], value)]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any("classifier" in n for n in changed)
    assert not model.training  # the caller's mode is restored


def test_adapter_lr_scale_speeds_up_the_adapters_only():
    """One AdamW step moves each entry by about its group's rate: the adapters 4x, the head 1x."""
    deltas = {}
    for scale in (1.0, 4.0):
        model = adapted_bert()
        before = trainable_state(model)
        train(model, TensorBatches(classification_data(8, seed=0), batch_size=8), TrainingConfig(
            learning_rate=1e-3, epochs=1, max_grad_norm=None, adapter_lr_scale=scale, cpu=True, progress=False))
        deltas[scale] = {n: dict(model.named_parameters())[n].detach() - v for n, v in before.items()}
    for name, delta in deltas[1.0].items():
        expected = 4.0 if ("lora_A" in name or "lora_B" in name) else 1.0
        torch.testing.assert_close(deltas[4.0][name], expected * delta, rtol=1e-4, atol=1e-9)


def test_custom_evaluation_and_epoch_callbacks_leave_the_trajectory_unchanged():
    batches = TensorBatches(classification_data(32, seed=0), batch_size=8)
    config = TrainingConfig(learning_rate=1e-2, epochs=2, cpu=True, progress=False)
    plain = adapted_bert(dropout=0.1)
    train(plain, batches, config)
    seen = []

    def noisy_evaluate(model, eval_batches):  # draws random numbers, as sampling-based metrics do
        assert not model.training
        return {"score": torch.rand(()) + len(list(eval_batches)), "draws": float(torch.randint(0, 9, ()))}

    class EpochEnd:
        def on_epoch_end(self, model, epoch, metrics):
            seen.append((epoch, sorted(metrics)))

    evaluated = adapted_bert(dropout=0.1)
    result = train(evaluated, batches, config, eval_batches=[{}] * 3, evaluate=noisy_evaluate, callbacks=[EpochEnd()])
    assert all(torch.equal(p, trainable_state(plain)[n]) for n, p in trainable_state(evaluated).items())
    assert 3 <= result.metrics["eval_score"] < 4
    assert seen == [(e, ["epoch", "eval_draws", "eval_score", "learning_rate", "step", "train_loss"]) for e in (1, 2)]


def test_macro_f1_averages_the_classes_seen_and_ignores_padding_labels():
    predictions = torch.tensor([0, 1, 1, 2, 2, 2, 3])
    labels = torch.tensor([0, 1, 2, 2, 2, 1, -100])
    # per-class F1: class 0 1.0, class 1 0.5, class 2 2/3 (class 3 only predicted for an ignored label)
    scores = classification_scores(predictions, labels)
    assert scores["accuracy"] == pytest.approx(4 / 6) and scores["macro_f1"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)

# -- exact resume --------------------------------------------------------------------------
@pytest.mark.parametrize("dropout, source", [(0.0, "tensor-batches"), (0.1, "dataloader")])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, dropout, source):
    data = classification_data(40, seed=0)  # 5 batches of 8: 10 steps in 2 epochs

    def batches():
        if source == "dataloader":  # reshuffles from the global torch RNG, without set_epoch
            return torch.utils.data.DataLoader(DictDataset(data), batch_size=8, shuffle=True)
        return TensorBatches(data, batch_size=8, seed=3)

    def run(output, **kwargs):
        model = adapted_bert(dropout)
        result = train(model, batches(), quick_config(output, warmup_steps=2), **kwargs)
        return model, result

    reference, expected = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crashed", callbacks=[CrashAfter(7)])
    assert latest_checkpoint(tmp_path / "crashed" / "checkpoint").name == "checkpoint-00000006"
    resumed, result = run(tmp_path / "crashed", resume=True)

    assert result.resumed_from_step == 6 and result.steps == expected.steps == 10
    want, have = trainable_state(reference), trainable_state(resumed)
    assert want.keys() == have.keys()
    assert all(torch.equal(want[n], have[n]) for n in want), "resumed adapter differs from the uninterrupted one"
    assert result.history == expected.history
    final = read_checkpoint(latest_checkpoint(tmp_path / "crashed" / "checkpoint"))
    assert final.global_step == 10 and all(torch.equal(final.model[n], have[n]) for n in have)


def test_checkpoint_holds_only_safetensors_and_json(tmp_path):
    model = adapted_bert()
    train(model, TensorBatches(classification_data(24, seed=0), batch_size=8), quick_config(tmp_path, epochs=1))
    root = tmp_path / "checkpoint"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000003", "latest"]  # older ones deleted
    folder = root / "checkpoint-00000003"
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "trainer_state.json", "training_state.safetensors"]
    document = json.loads((folder / "trainer_state.json").read_text())
    assert document["global_step"] == 3 and document["epoch"] == 1 and document["step_in_epoch"] == 0
    state = load_file(str(folder / "training_state.safetensors"))
    assert state["state.rng.0.torch_cpu"].dtype == torch.uint8
    assert any(k.startswith("state.optimizer.state.") and k.endswith("exp_avg_sq") for k in state)
    assert set(load_file(str(folder / "model.safetensors"))) >= set(trainable_state(model))


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real = checkpoint_module.atomic_save_tensors
    calls = []

    def dies_on_the_fourth_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 4:  # step 6's second file
            Path(path).write_bytes(b"half a file")
            raise KeyboardInterrupt("simulated crash while writing")
        return real(tensors, path, metadata)

    monkeypatch.setattr(checkpoint_module, "atomic_save_tensors", dies_on_the_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        train(adapted_bert(), TensorBatches(classification_data(40, seed=0), batch_size=8), quick_config(tmp_path))
    monkeypatch.setattr(checkpoint_module, "atomic_save_tensors", real)
    root = tmp_path / "checkpoint"
    assert (root / "checkpoint-00000006.tmp").is_dir()
    assert read_checkpoint(latest_checkpoint(root)).global_step == 3
    result = train(adapted_bert(), TensorBatches(classification_data(40, seed=0), batch_size=8), quick_config(tmp_path),
                   resume=True)
    assert result.resumed_from_step == 3 and result.steps == 10
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000010", "latest"]


KILLED_RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_training import adapted_bert, classification_data, quick_config
from partial_lora.training import TensorBatches, train
train(adapted_bert(0.1), TensorBatches(classification_data(40, seed=0), batch_size=8),
      quick_config({output!r}, epochs=24, checkpoint_every=1))
"""


def test_kill_9_at_any_moment_leaves_a_checkpoint_that_resumes_exactly(tmp_path):
    output = tmp_path / "run"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), output=str(output))
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (output / "checkpoint" / "latest").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the training process wrote no checkpoint"
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.4))  # a step and its checkpoint take ~10 ms
    finally:
        process.kill()  # SIGKILL
        process.wait()
    found = read_checkpoint(latest_checkpoint(output / "checkpoint"))
    assert 1 <= found.global_step <= 120
    batches = TensorBatches(classification_data(40, seed=0), batch_size=8)
    resumed = adapted_bert(0.1)
    train(resumed, batches, quick_config(output, epochs=24, checkpoint_every=1), resume=True)
    reference = adapted_bert(0.1)
    train(reference, batches, quick_config(tmp_path / "reference", epochs=24, checkpoint_every=None))
    want, have = trainable_state(reference), trainable_state(resumed)
    assert all(torch.equal(want[n], have[n]) for n in want)


# -- divergence ------------------------------------------------------------------------------
class PoisonAt:
    """Sets one classifier weight to NaN after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, model, step: int) -> None:
        if step == self.step:
            with torch.no_grad():
                model.classifier.weight[0, 0] = float("nan")


class Snapshot:
    """Records the files of the latest checkpoint after step ``step``."""

    def __init__(self, root: Path, step: int) -> None:
        self.root, self.step, self.files = root, step, None

    def on_step_end(self, model, step: int) -> None:
        if step == self.step:
            self.files = folder_digest(latest_checkpoint(self.root))


@pytest.mark.parametrize("poison_step, failing_step, reason", [
    (4, 5, "the loss is nan"),  # a NaN weight: the next loss is NaN
    (6, 6, "parameter 'classifier.weight' holds NaN/inf values after the step"),  # caught before checkpoint 6
])
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, poison_step, failing_step, reason):
    snapshot = Snapshot(tmp_path / "checkpoint", 4)
    batches = TensorBatches(classification_data(40, seed=0), batch_size=8)
    with pytest.raises(TrainingDiverged) as caught:
        train(adapted_bert(), batches, quick_config(tmp_path), callbacks=[snapshot, PoisonAt(poison_step)])
    message = str(caught.value)
    assert f"step {failing_step}" in message and reason in message
    assert "checkpoint-00000003" in message and caught.value.step == failing_step
    assert caught.value.checkpoint == tmp_path / "checkpoint" / "checkpoint-00000003"
    assert folder_digest(caught.value.checkpoint) == snapshot.files
    assert read_checkpoint(latest_checkpoint(tmp_path / "checkpoint")).global_step == 3


def test_nan_in_an_input_batch_is_reported_by_name(tmp_path):
    data = classification_data(40, seed=0)
    data["attention_mask"] = data["attention_mask"].float()
    data["attention_mask"][17, 2] = float("nan")
    batches = TensorBatches(data, batch_size=8, shuffle=False)  # example 17 is in batch 3: step 3
    with pytest.raises(TrainingDiverged, match=r"step 3: the batch's 'attention_mask' holds NaN/inf values") as caught:
        train(adapted_bert(), batches, quick_config(tmp_path, checkpoint_every=2))
    assert caught.value.checkpoint.name == "checkpoint-00000002"
    assert read_checkpoint(caught.value.checkpoint).global_step == 2


# -- damaged or foreign checkpoints ----------------------------------------------------------
def crashed_run(tmp_path: Path) -> Path:
    with pytest.raises(KeyboardInterrupt):
        train(adapted_bert(), TensorBatches(classification_data(40, seed=0), batch_size=8), quick_config(tmp_path),
              callbacks=[CrashAfter(5)])
    return latest_checkpoint(tmp_path / "checkpoint")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_json(path: Path) -> None:
    document = json.loads(path.read_text())
    document["global_step"] = 4
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("damage, match", [
    (lambda c: truncate(c / "model.safetensors"), "sha256 differs"),
    (lambda c: flip_a_byte(c / "training_state.safetensors"), "sha256 differs"),
    (lambda c: edit_json(c / "trainer_state.json"), "does not match its checksum"),
    (lambda c: (c / "trainer_state.json").write_text("{not json"), "not valid JSON"),
    (lambda c: (c.parent / "latest").write_text("garbage"), "latest is damaged"),
])
def test_a_damaged_checkpoint_is_refused(tmp_path, damage, match):
    checkpoint = crashed_run(tmp_path)
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=match):
        train(adapted_bert(), TensorBatches(classification_data(40, seed=0), batch_size=8), quick_config(tmp_path),
              resume=True)


def test_resume_refuses_other_settings_and_fresh_runs_refuse_to_overwrite(tmp_path):
    crashed_run(tmp_path)
    batches = TensorBatches(classification_data(40, seed=0), batch_size=8)
    with pytest.raises(CheckpointError, match="learning_rate: 0.01 in the checkpoint, 0.02 now"):
        train(adapted_bert(), batches, quick_config(tmp_path, learning_rate=2e-2), resume=True)
    with pytest.raises(CheckpointError, match="steps_per_epoch: 5 in the checkpoint, 4 now"):
        train(adapted_bert(), TensorBatches(classification_data(32, seed=0), batch_size=8), quick_config(tmp_path),
              resume=True)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        train(adapted_bert(), batches, quick_config(tmp_path))
    other = partial_lora.apply(tiny_bert(num_labels=2), replace(ADAPTER, r=2))
    with pytest.raises(CheckpointError, match="build the model exactly as for the interrupted run"):
        train(other, batches, quick_config(tmp_path), resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(adapted_bert(), batches, quick_config(tmp_path / "empty"), resume=True)


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("changes, field", [
    ({"learning_rate": 0}, "learning_rate"),
    ({"epochs": 1.5}, "epochs"),
    ({"warmup_ratio": 0.1, "warmup_steps": 3}, "warmup_steps"),
    ({"schedule": "step"}, "schedule"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"checkpoint_every": 10}, "checkpoint_every"),  # no output_dir
    ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ({"progress": "yes"}, "progress"),
])
def test_invalid_settings_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"TrainingConfig\.{field}=.* is invalid: "):
        TrainingConfig(**changes)


def test_wrong_inputs_are_explained():
    model = adapted_bert()
    with pytest.raises(ValueError, match="one-shot iterator"):
        train(model, iter([{}]), TrainingConfig(cpu=True, progress=False))
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(tiny_bert().requires_grad_(False), [{}], TrainingConfig(cpu=True, progress=False))
    with pytest.raises(TypeError, match="must be a dict of tensors"):
        train(model, [(torch.zeros(2, 3),)], TrainingConfig(cpu=True, progress=False))


# -- PEFT baselines ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_peft_models_train_with_the_same_loop(method):
    import peft

    batches = TensorBatches(classification_data(32, seed=0), batch_size=8)
    common = dict(target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS")
    if method == "lora":
        config = peft.LoraConfig(r=4, lora_alpha=8, **common)
    else:
        config = peft.AdaLoraConfig(init_r=6, target_r=2, tinit=1, tfinal=1, deltaT=1, total_step=8, **common)
    model = peft.get_peft_model(tiny_bert(num_labels=2), config)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = trainable_state(model)
    allocated = []

    def allocate(peft_model, step):  # PEFT's AdaLoRA needs the gradients: after step, before zero_grad
        assert any(p.grad is not None for p in peft_model.parameters() if p.requires_grad)
        peft_model.base_model.update_and_allocate(step)
        allocated.append(step)

    result = train(model, batches, TrainingConfig(learning_rate=1e-2, epochs=2, cpu=True, progress=False),
                   callbacks=[allocate] if method == "adalora" else None)
    assert result.steps == 8 and allocated == ([] if method == "lora" else list(range(1, 9)))
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in trainable.items() if "lora_" in n)


# -- several processes -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_identical_adapters_and_resume_exactly_with_gloo(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(worker), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world"] == 2 and s["backend"] == "gloo" and s["steps"] == 8 for s in summaries)
    assert all(s["resumed_from_step"] == 3 for s in summaries)
    assert summaries[0]["history"] == summaries[1]["history"] == summaries[0]["resumed_history"]
    tensors = {(r, run): load_file(str(tmp_path / f"rank{r}_{run}.safetensors"))
               for r in (0, 1) for run in ("init", "whole", "resumed")}
    names = list(tensors[0, "init"])
    for r, run in [(1, "whole"), (0, "resumed"), (1, "resumed")]:
        assert all(torch.equal(tensors[r, run][n], tensors[0, "whole"][n]) for n in names), (r, run)
    assert any(not torch.equal(tensors[0, "whole"][n], tensors[0, "init"][n]) for n in names if "lora_B" in n)
    checkpoint = read_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoint"))
    assert checkpoint.global_step == 8 and checkpoint.document["world_size"] == 2
    assert len(checkpoint.state["rng"]) == 2
    assert all(torch.equal(checkpoint.model[n], tensors[0, "whole"][n]) for n in names)

def test_a_model_can_be_trained_again_with_other_precision():
    model = adapted_bert()
    batches = TensorBatches(classification_data(32, seed=0), batch_size=16)
    first = train(model, batches, TrainingConfig(learning_rate=1e-2, epochs=1, cpu=True, progress=False,
                                                 mixed_precision="bf16"))
    assert "forward" not in model.__dict__  # accelerate's autocast wrapper is removed again
    before = trainable_state(model)
    second = train(model, batches, TrainingConfig(learning_rate=1e-2, epochs=1, cpu=True, progress=False))
    assert first.steps == second.steps == 2
    assert any(not torch.equal(p, before[n]) for n, p in trainable_state(model).items())
