"""One process of the two-process DDP test (launched by torchrun from test_training.py).

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT_DIR

Every process builds the same tiny Partial-LoRA BERT (adapter dropout 0.1) and the same
batches and trains on the CPU (gloo) three times: ``whole`` (uninterrupted), ``crashed``
(a simulated crash after step 5, checkpoint at step 3) and ``resumed`` (resume=True from
that checkpoint). It writes its trainable tensors before training and after each run to
``OUT_DIR/rank<k>_<run>.safetensors`` and a summary to ``OUT_DIR/rank<k>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from partial_lora.training import TensorBatches, make_accelerator, train  # noqa: E402
from fixtures import CrashAfter, classification_data  # noqa: E402
from test_training import adapted_bert, quick_config, trainable_state  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    batches = TensorBatches(classification_data(64, seed=0), batch_size=8, seed=0)  # 8 batches: 4 per process
    evaluation = TensorBatches(classification_data(40, seed=1), batch_size=8, shuffle=False)

    def run(folder: str, **kwargs):
        model = adapted_bert(dropout=0.1)
        return model, train(model, batches, quick_config(out / folder), eval_batches=evaluation, **kwargs)

    rank = make_accelerator(quick_config(out)).process_index
    save_file(trainable_state(adapted_bert(dropout=0.1)), str(out / f"rank{rank}_init.safetensors"))
    model, whole = run("whole")
    save_file(trainable_state(model), str(out / f"rank{rank}_whole.safetensors"))
    try:
        run("crashed", callbacks=[CrashAfter(5)])
    except KeyboardInterrupt:
        pass
    model, resumed = run("crashed", resume=True)
    save_file(trainable_state(model), str(out / f"rank{rank}_resumed.safetensors"))
    accelerator = make_accelerator(quick_config(out))
    summary = {
        "world": accelerator.num_processes, "backend": str(accelerator.state.backend),
        "steps": whole.steps, "history": whole.history, "resumed_history": resumed.history,
        "resumed_from_step": resumed.resumed_from_step,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
