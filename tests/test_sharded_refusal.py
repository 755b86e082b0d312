"""FSDP and DeepSpeed are refused before anything is trained or written; the message points to DDP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

import partial_lora
from partial_lora.training import TensorBatches, TrainingConfig, train

from conftest import classification_data, tiny_bert


class ShardedStandIn(SimpleNamespace):
    """An accelerator as accelerate would make it under ``accelerate launch --use_fsdp`` (or DeepSpeed),
    which one CPU process cannot build; anything but ``distributed_type`` fails loudly if touched."""

    def __getattr__(self, name):
        raise AssertionError(f"the loop used accelerator.{name} before refusing the set-up")


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_sharded_training_is_refused_before_anything_is_trained_or_written(tmp_path, kind):
    config = partial_lora.PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query"],
                                            modules_to_save=["classifier"])
    model = partial_lora.apply(tiny_bert(num_labels=2), config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = TensorBatches(classification_data(16, 0), batch_size=8)
    settings = TrainingConfig(learning_rate=1e-2, epochs=1, cpu=True, progress=False, output_dir=str(tmp_path / "run"),
                              checkpoint_every=1)
    with pytest.raises(ValueError) as refused:
        train(model, batches, settings, accelerator=ShardedStandIn(distributed_type=kind))
    message = str(refused.value)
    assert kind.value in message and "DDP" in message
    assert "accelerate launch --multi_gpu --num_processes" in message
    assert list(tmp_path.iterdir()) == []
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
