"""Files written by partial-lora 0.1.0 (before the package was reorganised) still load.

``tests/data/v0_1`` was written by the code as of commit d871a78: an adapter folder, a
training run interrupted after its step-10 checkpoint (of 20), and a ticket; ``expected.json``
holds what they gave then (logits, the uninterrupted run's final tensors, the ticket's ratios).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import partial_lora
from conftest import classification_data, tiny_bert
from partial_lora import PartialLoraConfig
from partial_lora.ticket import Ticket
from partial_lora.training import TensorBatches, TrainingConfig, train

DATA = Path(__file__).parent / "data" / "v0_1"
EXPECTED = json.loads((DATA / "expected.json").read_text())


def test_an_old_adapter_loads_to_the_same_logits():
    model = partial_lora.load(tiny_bert(num_labels=3), DATA / "adapter")
    batch = {k: torch.tensor(v) for k, v in EXPECTED["adapter_batch"].items()}
    with torch.no_grad():
        logits = model(**batch).logits.double()
    assert torch.allclose(logits, torch.tensor(EXPECTED["adapter_logits"], dtype=torch.float64), atol=1e-6, rtol=0)


def test_an_old_checkpoint_resumes_to_the_same_final_adapter(tmp_path, one_thread):
    """The uninterrupted run of then, to float32 rounding (both written with one thread).

    The run used 0.1's parametrisation (no keep compensation): the model is built the same way.
    Bit-identity holds on one machine (tests/test_training.py checks it) but not across CPUs:
    their float32 kernels round differently, seen as up to 6e-8 here on another CPU. 1e-6 is
    far below what a wrong resume moves (one optimiser step of that run moves the largest weight by 1e-3 to 6e-3).
    """
    run = tmp_path / "run"
    shutil.copytree(DATA / "run", run)
    model = partial_lora.apply(tiny_bert(num_labels=2), PartialLoraConfig(
        r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"],
        keep_compensation=False))
    config = TrainingConfig.from_dict({**EXPECTED["training_config"], "output_dir": str(run),
                                       "betas": tuple(EXPECTED["training_config"]["betas"])})
    result = train(model, TensorBatches(classification_data(40, seed=0), batch_size=8), config, resume=True)
    assert result.resumed_from_step == EXPECTED["checkpoint_step"]
    final = {n: p.detach().double() for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(final) == sorted(EXPECTED["final_trainable"])
    for name, values in EXPECTED["final_trainable"].items():
        assert torch.allclose(final[name], torch.tensor(values, dtype=torch.float64), atol=1e-6, rtol=0), name


def test_an_old_ticket_loads_with_its_ratios_and_scores():
    ticket = Ticket.load(DATA / "ticket.json")
    assert ticket.keep_ratios() == EXPECTED["ticket_keep_ratios"]
    assert ticket.fingerprint() == EXPECTED["ticket_fingerprint"]
    assert ticket.scores and all(rows.dtype == torch.float32 for rows, _ in ticket.scores.values())
