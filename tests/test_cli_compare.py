"""``partial-lora compare`` on every method, on the packaged vision and generation tasks (tiny slices).

MNIST with EfficientNet-Lite0 trains every method of the comparison (PEFT's VeRA and SHiRA
reach the 1x1 convolutions as the linear maps they are). BBC-gen trains LoRA and Partial-LoRA on SmolLM2-135M
and scores exact match.
"""

from __future__ import annotations

import json

import pytest

from partial_lora.cli import main
from partial_lora.methods import METHODS

pytestmark = pytest.mark.slow


def test_compare_trains_every_method_on_mnist(tmp_path, capsys):
    out = tmp_path / "mnist"
    argv = ["compare", "--dataset", "mnist", "--methods", ",".join(METHODS), "--out", str(out),
            "--train-per-class", "2", "--validation-per-class", "1", "--test-per-class", "1", "--shots", "2",
            "--epochs", "1",
            "--batch-size", "5", "--quiet"]
    assert main(argv) == 0
    document = json.loads((out / "results.json").read_text())
    trained = {row["method"] for row in document["results"]}
    assert trained == set(METHODS) and not document["notes"]
    # VeRA and SHiRA reach the 1x1 convolutions through the pointwise wrapper.
    metadata = json.loads((out / "adapters" / "vera-seed0" / "training_metadata.json").read_text())
    assert any(name.endswith("_expand_conv") for name in metadata["pointwise_convs_as_linear"])
    rows = {row["method"]: row for row in document["results"]}
    assert rows["partial-lora"]["trainable_params"] < rows["lora"]["trainable_params"]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows.values())


def test_compare_runs_lora_and_partial_lora_on_the_generation_task(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTIAL_LORA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gen"
    argv = ["compare", "--dataset", "bbc-gen", "--methods", "lora,partial-lora", "--out", str(out),
            "--train-per-class", "2", "--validation-per-class", "1", "--test-per-class", "1", "--shots", "2",
            "--epochs", "1", "--max-length", "64", "--quiet"]  # one validation prompt per class: each is generated
    assert main(argv) == 0
    document = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in document["results"]}
    assert set(rows) == {"lora", "partial-lora"}
    assert all(0.0 <= row["exact_match"] <= 1.0 for row in rows.values())
    assert rows["partial-lora"]["trainable_params"] < rows["lora"]["trainable_params"]
    ticket = json.loads((out / "ticket.json").read_text())
    assert ticket["provenance"]["metric"] == "neg_loss"
