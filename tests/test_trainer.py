"""The Hugging Face Trainer with Partial-LoRA: adapter-only checkpoints, exact resume, reloadable saves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import partial_lora
from conftest import classification_data, tiny_bert

transformers = pytest.importorskip("transformers")
from partial_lora.integrations import PartialLoraTrainer, PartialLoraTrainerMixin

ADAPTER = partial_lora.PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"],
                                         modules_to_save=["classifier"])
FULL_MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "config.json")


def adapted_bert(**changes):
    return partial_lora.apply(tiny_bert(num_labels=2), replace(ADAPTER, **changes))


def examples(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    data = classification_data(count, seed)
    return [{key: value[i] for key, value in data.items()} for i in range(count)]


def arguments(out: Path, **changes):
    settings = dict(
        output_dir=str(out), per_device_train_batch_size=8, max_steps=6, save_steps=3, learning_rate=1e-2,
        seed=0, report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, logging_steps=100,
    )
    settings.update(changes)
    return transformers.TrainingArguments(**settings)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class StopAt(transformers.TrainerCallback):
    """Ends training after global step ``step`` (as an interrupted run would, at a checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Six steps (dropout on), a checkpoint every three, then ``save_model``."""
    out = tmp_path_factory.mktemp("run")
    model = adapted_bert()
    trainer = PartialLoraTrainer(model=model, args=arguments(out), train_dataset=examples(32, 0))
    trainer.train()
    trainer.save_model(str(out / "final"))
    return out, model


def test_checkpoints_hold_the_adapter_and_the_trainers_own_state_only(finished_run):
    out, model = finished_run
    checkpoint = out / "checkpoint-3"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json"} <= names
    assert not names & set(FULL_MODEL_FILES)
    with safe_open(str(checkpoint / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
        stored = sum(handle.get_tensor(k).numel() * handle.get_tensor(k).element_size() for k in keys)
    assert all(k.startswith(("adapters.", "modules_to_save.")) for k in keys)
    adapter_bytes = sum(p.numel() * p.element_size() for p in trainable_state(model).values())
    indices = sum(4 * (len(layer.lora_rows) + len(layer.lora_columns))  # int32 on disk
                  for layer in partial_lora.adapter_layers(model).values())
    assert stored == adapter_bytes + indices
    size = (checkpoint / "adapter_model.safetensors").stat().st_size
    assert size < stored + 4096  # the tensors plus a small header
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert size < base_bytes / 10


def test_resuming_from_a_checkpoint_ends_with_the_same_adapter(finished_run, tmp_path, one_thread):
    _, uninterrupted = finished_run
    interrupted = PartialLoraTrainer(model=adapted_bert(), args=arguments(tmp_path), train_dataset=examples(32, 0),
                                     callbacks=[StopAt(3)])
    interrupted.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]
    model = adapted_bert()  # a new process: the same apply() call, fresh adapter values
    resumed = PartialLoraTrainer(model=model, args=arguments(tmp_path), train_dataset=examples(32, 0))
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    expected, got = trainable_state(uninterrupted), trainable_state(model)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_save_model_reloads_onto_a_fresh_base_to_identical_logits(finished_run):
    out, model = finished_run
    loaded = partial_lora.load(tiny_bert(num_labels=2), out / "final")
    batch = {k: v for k, v in classification_data(8, 5).items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_from_pretrained_does_not_load_the_folder_without_its_adapter(finished_run):
    out, _ = finished_run
    folder = out / "final"
    assert not any((folder / name).exists() for name in FULL_MODEL_FILES)
    with pytest.raises((OSError, KeyError, ValueError)):  # today: KeyError 'base_model_name_or_path'
        transformers.AutoModelForSequenceClassification.from_pretrained(str(folder))


def test_load_best_model_at_end_goes_back_to_the_best_checkpoint(tmp_path):
    scores = iter([1.0, 0.0])  # the first evaluation (step 3) is the best

    def metrics(prediction):
        return {"score": next(scores)}

    model = adapted_bert()
    args = arguments(tmp_path, eval_strategy="steps", eval_steps=3, load_best_model_at_end=True,
                     metric_for_best_model="score", greater_is_better=True)
    trainer = PartialLoraTrainer(model=model, args=args, train_dataset=examples(32, 0),
                                 eval_dataset=examples(8, 1), compute_metrics=metrics)
    trainer.train()
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-3"
    best = partial_lora.load(tiny_bert(num_labels=2), tmp_path / "checkpoint-3")
    last = partial_lora.load(tiny_bert(num_labels=2), tmp_path / "checkpoint-6")
    have = dict(model.named_parameters())
    for name, parameter in best.named_parameters():
        if "lora_" in name or name.startswith("classifier"):
            assert torch.equal(have[name], parameter)
    assert not all(torch.equal(have[n], p) for n, p in last.named_parameters() if "lora_" in n)


def test_the_mixin_works_with_any_trainer_subclass(tmp_path):
    class CountingTrainer(transformers.Trainer):
        losses = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            CountingTrainer.losses += 1
            return super().compute_loss(model, inputs, *args, **kwargs)

    class PartialLoraCountingTrainer(PartialLoraTrainerMixin, CountingTrainer):
        pass

    trainer = PartialLoraCountingTrainer(model=adapted_bert(), args=arguments(tmp_path, max_steps=2, save_steps=2),
                                         train_dataset=examples(16, 0))
    trainer.train()
    assert CountingTrainer.losses == 2
    assert (tmp_path / "checkpoint-2" / "adapter_config.json").is_file()
    assert not (tmp_path / "checkpoint-2" / "model.safetensors").exists()


def test_a_model_without_adapters_is_refused(tmp_path):
    with pytest.raises(ValueError, match="partial_lora.apply"):
        PartialLoraTrainer(model=tiny_bert(num_labels=2), args=arguments(tmp_path), train_dataset=examples(8, 0))


def test_resuming_from_another_adapters_checkpoint_is_refused(finished_run, tmp_path):
    out, _ = finished_run
    model = adapted_bert(seed=1)  # other rows and columns
    before = trainable_state(model)
    trainer = PartialLoraTrainer(model=model, args=arguments(tmp_path), train_dataset=examples(32, 0))
    with pytest.raises(partial_lora.AdapterFileError, match="other rows or columns"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    after = trainable_state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
