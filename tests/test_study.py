"""The study script's smoke version: every part runs on tiny slices and the document is whole.

This is the CI-sized version of ``python -m studies.study`` (the full study is run by hand and
its output committed as docs/RESULTS.md). It checks that each section gets its table and plot,
that every table shows its rows' learning rates and every rate was chosen on validation, that
results/study.json holds the rows and paired comparisons, that the parameter-matched LoRA
really is matched, and that re-running reuses the runs. A fast test pins down how a point is
placed against LoRA's Pareto front.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from partial_lora.statistics import VERDICTS
from studies import plan
from studies.analysis import Evidence
from studies.runs import SettingRuns
from studies.study import main as study_main

SETTING = plan.SMOKE_SETTINGS["bbc"]
SECTIONS = ("## 1. Main table", "## 2. Learning rates", "## 3. The Pareto front", "## 4. Random vs targeted",
            "## 5. Derived vs uniform", "## 6. Threshold sweep", "## 7. Rank sweep", "## 8. Shots and ticket methods",
            "## 9. Per-layer")
PLOTS = ("main", "lr", "pareto", "selection", "uniform", "thresholds", "ranks", "tickets", "layers")
TRAINED_SECTIONS = SECTIONS[:7]  # the sections whose tables list trained models
ROW_FIELDS = ("task", "method", "seed", "rank", "threshold", "learning_rate", "lr_grid", "lr_selected_on",
              "validation_metric", "test_metric", "test_examples", "trainable_params", "part", "label")
COMPARISON_FIELDS = ("task", "method", "label", "vs", "diff_points", "ci_low", "ci_high", "verdict", "seeds",
                     "examples", "part")


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


def _sections(text: str) -> dict[str, str]:
    """``{section heading: its bbc subsection}``."""
    found = {}
    for heading in SECTIONS:
        body = text.split(heading, 1)[1].split("\n## ", 1)[0]
        found[heading] = body.split("### MiniLM", 1)[1].split("\n### ", 1)[0]
    return found


def _study(smoke: Path) -> dict:
    return json.loads((smoke / "results" / "study.json").read_text())


@pytest.mark.slow
def test_every_section_has_its_table_plot_and_command(smoke):
    text = (smoke / "RESULTS.md").read_text()
    assert text.startswith("# Results") and "SMOKE RUN" in text
    for heading, body in _sections(text).items():
        assert "Missing" not in body and "Incomplete" not in body and "Not run" not in body, heading
        assert "|---|" in body, f"{heading} has no table"
        assert "![" in body, f"{heading} has no plot"
    for name in PLOTS:
        assert (smoke / "results" / f"bbc-{name}.png").stat().st_size > 5_000, name
    compares = [line for f in (smoke / "runs" / "bbc").glob("*/command.txt") for line in f.read_text().splitlines()
                if line.startswith("partial-lora compare")]
    # main, matched, thresholds, pareto's lora-ranks and partial-thresholds, pareto's masking budgets, ranks
    assert len(compares) == 5 + len(SETTING.pareto_masking_ranks) + len(plan.RANK_SWEEP)
    assert text.count("partial-lora compare --dataset bbc") == len(compares)  # each named once, in its section
    assert "partial-lora ticket --dataset bbc" in text
    assert "lies **" in _sections(text)["## 3. The Pareto front"]  # the stated position against LoRA's front
    # MNIST was not asked for: its sections say so instead of inventing numbers.
    assert "### EfficientNet-Lite0" in text and "Missing: part(s) main" in text


@pytest.mark.slow
def test_every_table_of_trained_models_shows_their_learning_rate(smoke):
    sections = _sections((smoke / "RESULTS.md").read_text())
    for heading in TRAINED_SECTIONS:
        tables = [line for line in sections[heading].splitlines() if line.startswith("| configuration |")]
        assert tables, heading
        for header in tables:
            assert "learning rate" in header or "selected rate" in header, heading
    main = sections["## 1. Main table"]
    assert "grid (chosen on validation)" in main
    for rate in SETTING.lr_grid:
        assert f"at {rate:g}" in sections["## 2. Learning rates"]


@pytest.mark.slow
def test_every_rate_was_chosen_on_validation_from_the_grid(smoke):
    data = _study(smoke)
    searches = {(s["part"], s["folder"], s["label"]): s for s in data["settings"]["bbc"]["lr_searches"]}
    assert data["rows"]
    for row in data["rows"]:
        assert row["lr_selected_on"] == "validation", row["label"]
        assert len(row["lr_grid"]) == len(SETTING.lr_grid) and row["learning_rate"] in row["lr_grid"]
        search = searches[(row["part"], row["folder"], row["label"])]
        trials = {t["learning_rate"]: t["validation_metric"] for t in search["validation"]}
        assert search["selected"] == row["learning_rate"] and search["selected_on"] == "validation"
        best = max(trials.values())
        assert row["learning_rate"] == min(rate for rate, value in trials.items() if value == best)
    assert "reported models trained at a rate selected on validation" in (smoke / "RESULTS.md").read_text()


@pytest.mark.slow
def test_study_json_has_rows_comparisons_and_every_method(smoke):
    data = _study(smoke)
    assert (smoke / "results" / "study.json").stat().st_size < 5_000_000
    for row in data["rows"]:
        for name in ROW_FIELDS:
            assert name in row, name
        assert 0 <= row["test_metric"] <= 1 and row["task"] == "bbc"
    main_methods = {r["method"] for r in data["rows"] if r["part"] == "main"}
    notes = " ".join(data["settings"]["bbc"]["notes"].get("main", []))
    for method in SETTING.methods:  # lora-eva included: trained, or the reason it could not be
        assert method in main_methods or method in notes, method
    assert {r["part"] for r in data["rows"]} == set(SETTING.parts) - {"tickets"}
    versus_lora = [c for c in data["comparisons"] if c["vs"] == "lora" and c["kind"] == "paired"]
    labels = {r["label"] for r in data["rows"]} - {"lora r=8"}
    assert labels <= {c["label"] for c in versus_lora if c["vs_label"] == "lora r=8"}
    stated = [(c["part"], c["folder"], c["label"], c["kind"], c["vs_label"]) for c in data["comparisons"]]
    assert len(stated) == len(set(stated))  # each difference once, however many sections state it
    for comparison in data["comparisons"]:
        for name in COMPARISON_FIELDS:
            assert name in comparison, name
        assert comparison["ci_low"] <= comparison["diff_points"] <= comparison["ci_high"]
        assert comparison["verdict"] in VERDICTS
    front = [c for c in data["comparisons"] if c["kind"] == "front"]
    assert {c["position"] for c in front} <= {"above", "on", "below"}
    assert any(c["method"] == "partial-lora" for c in front)
    settings = data["settings"]["bbc"]
    assert settings["lora_front"] and settings["main_tickets"] and settings["tickets"]
    assert set(settings["update_magnitudes"]) == {"lora", "partial-lora"}


@pytest.mark.slow
def test_the_matched_lora_has_about_partial_loras_parameter_count(smoke):
    rows = _study(smoke)["rows"]
    partial = [r for r in rows if r["part"] == "main" and r["method"] == "partial-lora"]
    lora = [r for r in rows if r["part"] == "main" and r["method"] == "lora"]
    matched = [r for r in rows if r["part"] == "matched"]
    assert {r["seed"] for r in matched} == {0, 1} and all(r["method"] == "lora" for r in matched)
    # LoRA's count is linear in the rank: two ranks give the adapters' share and the head's.
    per_rank = (lora[0]["trainable_params"] - matched[0]["trainable_params"]) / (lora[0]["rank"] - matched[0]["rank"])
    adapters = {r["rank"]: r["rank"] * per_rank for r in (lora[0], matched[0])}
    partial_adapters = partial[0]["trainable_params"] - (lora[0]["trainable_params"] - adapters[lora[0]["rank"]])
    # The matched rank is the nearest one: its adapters are within half a rank step of Partial-LoRA's.
    assert abs(adapters[matched[0]["rank"]] - partial_adapters) <= per_rank / 2 + 1


@pytest.mark.slow
def test_thresholds_cover_both_modes_and_the_ticket_table_every_method(smoke):
    thresholds = _sections((smoke / "RESULTS.md").read_text())["## 6. Threshold sweep"]
    for tau in plan.ABSOLUTE_THRESHOLDS:
        assert f"| partial-lora tau={tau:g} absolute |" in thresholds
    for tau in SETTING.pareto_thresholds:
        assert f"| partial-lora tau={tau:g} |" in thresholds
    assert "| partial-lora |" in thresholds  # relative tau 0.9, the main table's
    tickets = _sections((smoke / "RESULTS.md").read_text())["## 8. Shots and ticket methods"]
    for method in plan.TICKET_METHODS:
        assert re.search(rf"\| {method} \| \d", tickets)
    for shots in SETTING.shots:
        assert re.search(rf"\| {shots} \| \d", tickets)


@pytest.mark.slow
def test_rerunning_reuses_finished_runs(smoke, capsys):
    stamp = {p: p.stat().st_mtime for p in (smoke / "runs" / "bbc").glob("**/results.json")}
    assert study_main(["--smoke", "--settings", "bbc", "--runs", str(smoke / "runs"),
                       "--doc", str(smoke / "again.md"), "--quiet"]) == 0
    assert "[study] partial-lora" not in capsys.readouterr().out  # nothing trained again
    assert stamp == {p: p.stat().st_mtime for p in (smoke / "runs" / "bbc").glob("**/results.json")}
    assert (smoke / "again.md").read_text().split("\n", 3)[3] == (smoke / "RESULTS.md").read_text().split("\n", 3)[3]


@pytest.mark.slow
def test_a_method_the_plan_added_to_a_finished_compare_is_read_from_its_runs_so_far(smoke, tmp_path):
    """results.json is written when a compare ends; until then an added method's finished runs are
    in partial/, and the document shows them (the part marked cut short), not 'Not trained yet'."""
    import shutil

    from studies.runs import load_setting_runs

    runs = tmp_path / "runs"
    shutil.copytree(smoke / "runs" / "bbc" / "main", runs / "bbc" / "main")
    results = runs / "bbc" / "main" / "results.json"
    whole = load_setting_runs(SETTING, smoke / "runs")
    document = json.loads(results.read_text())
    document["settings"]["methods"] = [m for m in document["settings"]["methods"] if m != "targeted"]
    document["results"] = [row for row in document["results"] if row["method"] != "targeted"]
    document["lr_search"] = [search for search in document["lr_search"] if search["method"] != "targeted"]
    results.write_text(json.dumps(document))

    loaded = load_setting_runs(SETTING, runs)
    targeted = sorted((r["seed"], r["test_correct"]) for r in loaded.rows if r["method"] == "targeted")
    assert targeted and targeted == sorted((r["seed"], r["test_correct"]) for r in whole.select("main")
                                           if r["method"] == "targeted")
    assert [s["method"] for s in loaded.searches].count("targeted") == 1
    assert "main" in loaded.incomplete and "main" not in whole.incomplete
    assert len([r for r in loaded.rows if r["method"] == "lora"]) == len([r for r in whole.select("main")
                                                                           if r["method"] == "lora"])


def test_a_finished_compare_runs_again_when_the_plan_adds_a_method_or_a_grid_extension(tmp_path):
    from studies.study import _finished

    out = tmp_path / "main"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"settings": {"methods": ["lora", "partial-lora"],
                                                               "lr_grid_extend": 2}}))
    argv = ["compare", "--out", str(out), "--lr-grid-extend", "2", "--methods"]
    assert _finished([*argv, "lora,partial-lora"])
    assert _finished([*argv, "partial-lora"])
    assert not _finished([*argv, "lora,partial-lora,uniform"])  # the plan added uniform: resume it
    assert not _finished(["compare", "--out", str(out), "--lr-grid-extend", "3", "--methods", "lora"])
    assert not _finished(["compare", "--out", str(tmp_path / "never-run"), "--methods", "lora"])


def test_a_part_held_by_a_live_process_is_skipped_and_a_dead_holders_lock_is_taken(tmp_path):
    from studies.study import _claim

    folder = tmp_path / "part"
    folder.mkdir()
    (folder / ".running").write_text(str(os.getppid()))  # alive: the process that started pytest
    assert not _claim(folder)
    (folder / ".running").write_text("999999999")  # no such process
    assert _claim(folder)
    assert (folder / ".running").read_text() == str(os.getpid())


def _row(part: str, method: str, rank: int, params: int, right: int, *, seed: int = 0, examples: int = 200) -> dict:
    label = f"{method} r={rank}" if method == "lora" else method
    return {"task": "bbc", "part": part, "folder": "", "label": label, "method": method, "seed": seed, "rank": rank,
            "threshold": None, "threshold_mode": "relative", "learning_rate": 1e-3, "trainable_params": params,
            "accuracy": right / examples, "test_correct": "1" * right + "0" * (examples - right)}


def _evidence(*points: dict) -> Evidence:
    lora = [_row("main", "lora", 1, 100, 100), _row("pareto", "lora", 2, 1_000, 80),  # r=2 is dominated by r=1
            _row("pareto", "lora", 4, 10_000, 160)]
    return Evidence(SettingRuns(setting=SETTING, rows=lora + list(points)))


def test_a_point_is_above_on_or_below_lora_front_interpolated_in_log_parameters():
    evidence = _evidence(_row("main", "above", 8, 1_000, 190), _row("main", "on", 8, 1_000, 130),
                         _row("main", "below", 8, 1_000, 60), _row("main", "left", 8, 50, 120))
    assert [g.label for g in evidence.front()] == ["lora r=1", "lora r=4"]  # a dominated rank is not on the front
    for name, expected in (("above", "above"), ("on", "on"), ("below", "below"), ("left", "above")):
        record = evidence.position(evidence.find("main", name))
        assert record["position"] == expected, name
        assert record["ci_low"] <= record["diff_points"] <= record["ci_high"]
    # Half-way in log-parameters the front is the mean of r=1 (50 %) and r=4 (80 %): 65 %.
    assert evidence.position(evidence.find("main", "on"))["diff_points"] == pytest.approx(0.0)
    assert evidence.position(evidence.find("main", "above"))["diff_points"] == pytest.approx(95 - 65)
    left = evidence.position(evidence.find("main", "left"))
    assert left["range"] == "left" and left["diff_points"] == pytest.approx(60 - 50)  # against r=1, flat


def test_a_rate_chosen_at_an_end_of_the_grid_is_flagged():
    from studies.sections import _search_note

    def search(selected, complete=True, added=(), extend=0, tie=None):
        grid = sorted([1e-3, 2e-3, 5e-3, *added])
        validation = {rate: 0.9 if rate in (selected, tie) else 0.5 for rate in grid}
        return {"grid": grid, "validation": validation, "selected": selected, "complete": complete,
                "added": list(added), "extend": extend}

    assert _search_note(search(5e-3)) == "top of the rates tried: higher rates not tried"
    assert _search_note(search(1e-3)) == "bottom of the rates tried: lower rates not tried"
    assert _search_note(search(2e-3)) == ""
    assert _search_note(search(1e-3, tie=2e-3)) == ""  # a best shared with a neighbour: flat, not open
    assert _search_note(search(5e-3, complete=False)) == "search incomplete"
    assert _search_note({"grid": [1e-3], "validation": {1e-3: 0.9}, "selected": 1e-3, "complete": True}) == ""
    # Extended past the top: inside the rates tried now, or at the new top with the extensions used up.
    assert _search_note(search(1e-2, added=[1e-2, 2e-2], extend=2)) == "grid extended to 0.01, 0.02"
    assert _search_note(search(2e-2, added=[1e-2, 2e-2], extend=2)) == (
        "grid extended to 0.01, 0.02; top of the rates tried (the 2 added rates allowed were used): higher rates "
        "not tried")
