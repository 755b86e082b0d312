"""The study script's smoke version: every part runs on tiny slices and the document is whole.

This is the CI-sized version of ``python -m studies.study`` (the full study is run by hand and
its output committed as docs/RESULTS.md). It checks that each section gets a table and a
plot, that the parameter-matched LoRA really is matched, and that re-running reuses the runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from studies import plan
from studies.study import main as study_main

pytestmark = pytest.mark.slow

SECTIONS = ("## 1. Main table", "## 2. Matched parameters", "## 3. Random vs targeted", "## 4. Derived vs uniform",
            "## 5. Threshold sweep", "## 6. Rank sweep", "## 7. Shots and ticket methods", "## 8. Per-layer")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    try:
        assert study_main(["--smoke", "--settings", "bbc", "--runs", str(root / "runs"),
                           "--doc", str(root / "RESULTS.md"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    return root


def test_every_section_has_its_table_plot_and_command(smoke):
    text = (smoke / "RESULTS.md").read_text()
    assert text.startswith("# Results") and "SMOKE RUN" in text
    bbc = text.split("### MiniLM")[1:]  # the bbc subsection of every section
    assert len(bbc) == len(SECTIONS)
    for section in SECTIONS:
        assert section in text
    for subsection in bbc:
        body = subsection.split("### ")[0]
        assert "Missing" not in body and "Incomplete" not in body
    assert text.count("partial-lora compare --dataset bbc") == 6  # main, matched, thresholds, absolute, ranks x 2
    assert "partial-lora ticket --dataset bbc" in text
    for name in ("bbc-main", "bbc-thresholds", "bbc-ranks", "bbc-tickets", "bbc-layers"):
        assert (smoke / "results" / f"{name}.png").stat().st_size > 5_000
    # MNIST was not asked for: its sections say so instead of inventing numbers.
    assert "### EfficientNet-Lite0" in text and "Missing: part(s) main" in text


def test_the_matched_lora_has_about_partial_loras_parameter_count(smoke):
    raw = json.loads((smoke / "results" / "study.json").read_text())["bbc"]["results"]
    partial = [r for r in raw["main"] if r["method"] == "partial-lora"]
    lora = [r for r in raw["main"] if r["method"] == "lora"]
    matched = raw["matched"]
    assert {r["seed"] for r in matched} == {0, 1} and all(r["method"] == "lora" for r in matched)
    # LoRA's count is linear in the rank: two ranks give the adapters' share and the head's.
    per_rank = (lora[0]["trainable_params"] - matched[0]["trainable_params"]) / (lora[0]["rank"] - matched[0]["rank"])
    adapters = {r["rank"]: r["rank"] * per_rank for r in (lora[0], matched[0])}
    partial_adapters = partial[0]["trainable_params"] - (lora[0]["trainable_params"] - adapters[lora[0]["rank"]])
    # The matched rank is the nearest one: its adapters are within half a rank step of Partial-LoRA's.
    assert abs(adapters[matched[0]["rank"]] - partial_adapters) <= per_rank / 2 + 1


def test_thresholds_cover_both_modes_and_the_ticket_table_every_method(smoke):
    text = (smoke / "RESULTS.md").read_text()
    for mode in ("relative", "absolute"):
        for tau in plan.ABSOLUTE_THRESHOLDS:
            assert f"| {mode} tau={tau:g} |" in text
    tickets = text.split("## 7.")[1].split("## 8.")[0]
    for method in plan.TICKET_METHODS:
        assert re.search(rf"\| {method} \| \d", tickets)
    for shots in plan.SMOKE_SETTINGS["bbc"].shots:
        assert re.search(rf"\| {shots} \| \d", tickets)


def test_rerunning_reuses_finished_runs(smoke, capsys):
    stamp = {p: p.stat().st_mtime for p in (smoke / "runs" / "bbc").glob("*/results.json")}
    assert study_main(["--smoke", "--settings", "bbc", "--runs", str(smoke / "runs"),
                       "--doc", str(smoke / "again.md"), "--quiet"]) == 0
    assert "[study] partial-lora" not in capsys.readouterr().out  # nothing trained again
    assert stamp == {p: p.stat().st_mtime for p in (smoke / "runs" / "bbc").glob("*/results.json")}
    assert (smoke / "again.md").read_text().split("\n", 3)[3] == (smoke / "RESULTS.md").read_text().split("\n", 3)[3]


def test_a_part_held_by_a_live_process_is_skipped_and_a_dead_holders_lock_is_taken(tmp_path):
    from studies.study import _claim

    folder = tmp_path / "part"
    folder.mkdir()
    (folder / ".running").write_text(str(os.getppid()))  # alive: the process that started pytest
    assert not _claim(folder)
    (folder / ".running").write_text("999999999")  # no such process
    assert _claim(folder)
    assert (folder / ".running").read_text() == str(os.getpid())
