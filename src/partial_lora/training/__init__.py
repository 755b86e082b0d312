"""Training with ``accelerate``: one CPU, one GPU, or DDP over several GPUs and machines.

* :class:`TrainingConfig` - optimiser, schedule, checkpoint and logging settings;
* :func:`train` - the loop (AdamW, warm-up and decay, clipping, evaluation, exact resume);
* :class:`TrainResult` - metrics, history, time, peak memory;
* :mod:`.checkpoint` - crash-safe checkpoints in safetensors and JSON (:mod:`.resume` writes and restores them);
* :mod:`.optimizer` - AdamW's parameter groups and the adapter protocol (``adapter_parameters()``);
* :class:`TensorBatches` - reproducibly shuffled batches of in-memory tensors;
* :func:`evaluate_classification` - the default evaluation (loss, accuracy, macro-F1).

Example::

    from partial_lora.training import TensorBatches, TrainingConfig, train

    batches = TensorBatches({"input_ids": ids, "attention_mask": mask, "labels": y}, batch_size=32)
    result = train(model, batches, TrainingConfig(learning_rate=1e-3, epochs=3, output_dir="run",
                                                  checkpoint_every=500), eval_batches=validation)

Run the same script with ``accelerate launch --multi_gpu --num_processes 4 script.py`` (or
``torchrun``) to train on four GPUs; pass ``resume=True`` to continue an interrupted run.
"""

from .batches import TensorBatches
from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint, read_checkpoint
from .config import TrainingConfig
from .evaluate import classification_scores, evaluate_classification
from .loop import train
from .result import TrainingDiverged, TrainResult
from .setup import make_accelerator

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "TensorBatches",
    "TrainResult",
    "TrainingConfig",
    "TrainingDiverged",
    "classification_scores",
    "evaluate_classification",
    "latest_checkpoint",
    "make_accelerator",
    "read_checkpoint",
    "train",
]
