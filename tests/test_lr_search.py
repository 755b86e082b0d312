"""Learning-rate selection: the grid picks on validation, never on test, and goes past its ends when asked.

The CLI tests train for real (MiniLM, a few BBC articles, one epoch) but *rig the validation
scores* each rate's runs report, as a validation set that prefers a given rate would, and give
the test split the opposite preference: the kept rate must follow validation, and only the kept
rate's runs may be scored on test.
"""

from __future__ import annotations

import json

import pytest

from partial_lora.cli import main
from partial_lora.commands import compare as compare_module
from partial_lora.commands.lr_search import best_rate, end_note, extension_range, next_rate, open_end, rate_beyond

TINY = ["--train-per-class", "4", "--validation-per-class", "2", "--test-per-class", "2", "--epochs", "1",
        "--max-length", "16", "--methods", "lora", "--quiet"]


def test_best_rate_keeps_the_lowest_of_equal_scores():
    assert best_rate({2e-3: 0.9, 1e-3: 0.9, 5e-3: 0.5}) == 1e-3
    assert best_rate({1e-3: 0.1, 2e-3: 0.2}) == 2e-3


def test_a_search_is_open_only_where_its_one_best_rate_is_an_end():
    assert open_end({1e-3: 0.5, 2e-3: 0.6, 5e-3: 0.7}) == "top"
    assert open_end({5e-3: 0.5, 1e-3: 0.7, 2e-3: 0.6}) == "bottom"
    assert open_end({1e-3: 0.5, 2e-3: 0.7, 5e-3: 0.6}) is None
    assert open_end({1e-3: 0.1, 2e-3: 0.1, 5e-3: 0.1}) is None  # flat (e.g. at chance everywhere): nothing beyond
    assert open_end({1e-3: 0.7, 2e-3: 0.7, 5e-3: 0.6}) is None  # the bottom ties with its neighbour
    assert open_end({1e-3: 0.7}) is None  # one rate is no search
    assert rate_beyond({1e-3: 0, 1e-2: 0}, "top") == 0.02
    assert rate_beyond({1e-3: 0, 1e-2: 0}, "bottom") == 0.0005
    assert extension_range([1e-3, 1e-2], 2) == (0.00025, 0.04)
    assert next_rate({1e-3: 0.5, 1e-2: 0.6}, added=0, extend=1) == 0.02
    assert next_rate({1e-3: 0.5, 1e-2: 0.6}, added=1, extend=1) is None  # the extensions allowed are used up
    assert next_rate({1e-3: 0.5, 2e-3: 0.7, 1e-2: 0.6}, added=0, extend=1) is None  # the best lies inside
    note = end_note("full r=8", {1e-3: 0.5, 1e-2: 0.6}, extend_given=False)
    assert "at 0.01 (in --lr-grid's units), the highest" in note and "--lr-grid-extend N" in note
    assert "lowest" in end_note("lora r=8", {1e-3: 0.6, 1e-2: 0.5}, extend_given=True)
    assert end_note("lora r=8", {1e-3: 0.5, 2e-3: 0.6, 1e-2: 0.5}, extend_given=False) is None


@pytest.fixture
def rigged(monkeypatch, tmp_path):
    """Train for real, then report the validation score ``scores(rate)`` and a test score that prefers the opposite.

    Returns ``use(scores)``, which sets the scores and returns the list of ``(rate, seed,
    scored_on_test, trained_anew)`` of every call (False: a run reused from ``partial/`` or
    from its grid run's checkpoint).
    """
    calls: list[tuple[float, int, bool, bool]] = []
    real = compare_module.train_method
    box = {}

    def rigged_train(task, settings, **kwargs):
        rate, seed = kwargs["learning_rate"], kwargs["seed"]
        reused = kwargs.get("finished") is not None or (
            settings.resume and (kwargs["out"] / "partial" / f"{kwargs['label']}.json").is_file())
        row = real(task, settings, **kwargs)
        calls.append((rate, seed, kwargs["score_test"], not reused))
        row["validation_accuracy"] = box["scores"](rate)
        if kwargs["score_test"]:
            row["accuracy"] = 1.0 - box["scores"](rate)
        return row

    monkeypatch.setattr(compare_module, "train_method", rigged_train)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PARTIAL_LORA_CACHE", str(tmp_path / "cache"))

    def use(scores):
        box["scores"] = scores
        return calls

    return use


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_the_grid_keeps_the_rate_validation_prefers_and_scores_only_it_on_test(rigged, tmp_path):
    calls = rigged(lambda rate: {1e-3: 0.2, 2e-3: 0.9, 5e-3: 0.5}[rate])
    out = tmp_path / "grid"
    assert main(["compare", *TINY, "--seeds", "0,1", "--lr-grid", "1e-3,2e-3,5e-3", "--out", str(out)]) == 0
    document = _results(out)
    assert {row["learning_rate"] for row in document["results"]} == {2e-3}
    assert all(row["lr_selected_on"] == "validation" and row["lr_grid"] == [1e-3, 2e-3, 5e-3]
               for row in document["results"])
    (search,) = document["lr_search"]
    assert search["selected"] == 2e-3 and search["lr_grid_added"] == [] and search["at_grid_end"] is None
    # The test split was read for the kept rate only (seed 0 from its grid run, seed 1 trained at it).
    assert {(rate, seed) for rate, seed, on_test, _ in calls if on_test} == {(2e-3, 0), (2e-3, 1)}
    assert {rate for rate, seed, on_test, _ in calls if not on_test} == {1e-3, 2e-3, 5e-3}
    for rate in (1e-3, 5e-3):
        assert "accuracy" not in json.loads((out / "partial" / f"lora-seed0-lr{rate:g}.json").read_text())
    assert "highest rate tried" not in (out / "report.md").read_text()


def test_a_best_rate_at_the_top_is_extended_until_the_best_lies_inside(rigged, tmp_path):
    peak = 4e-3
    calls = rigged(lambda rate: 1.0 - abs(rate - peak) * 100)
    out = tmp_path / "up"
    assert main(["compare", *TINY, "--lr-grid", "1e-3,2e-3", "--lr-grid-extend", "3", "--out", str(out)]) == 0
    (search,) = _results(out)["lr_search"]
    assert search["lr_grid_added"] == [0.004, 0.008]  # 4e-3 was the top until 8e-3 scored lower: then it stopped
    assert search["selected"] == 0.004 and search["at_grid_end"] is None
    assert [t["learning_rate"] for t in search["trials"]] == [0.001, 0.002, 0.004, 0.008]
    (row,) = _results(out)["results"]
    assert row["learning_rate"] == 0.004 and row["lr_grid"] == [0.001, 0.002, 0.004, 0.008]
    assert [rate for rate, _, on_test, _ in calls if on_test] == [0.004]


def test_an_extension_budget_that_runs_out_at_an_end_is_reported(rigged, tmp_path):
    rigged(lambda rate: 1.0 - rate)  # lower is always better
    out = tmp_path / "down"
    assert main(["compare", *TINY, "--lr-grid", "1e-3,2e-3", "--lr-grid-extend", "1", "--out", str(out)]) == 0
    (search,) = _results(out)["lr_search"]
    assert search["lr_grid_added"] == [0.0005] and search["selected"] == 0.0005 and search["at_grid_end"] == "bottom"
    report = (out / "report.md").read_text()
    assert "0.0005 (in --lr-grid's units), the lowest rate tried" in report and "raise --lr-grid-extend" in report
    document = _results(out)
    assert len(document["warnings"]) == 1 and document["notes"] == []  # notes: why a method was not trained


def test_a_flat_validation_score_is_not_followed_past_the_grid(rigged, tmp_path):
    calls = rigged(lambda rate: 0.2)  # e.g. a method at chance at every rate: the lowest is kept on a tie
    out = tmp_path / "flat"
    assert main(["compare", *TINY, "--lr-grid", "1e-3,2e-3", "--lr-grid-extend", "2", "--out", str(out)]) == 0
    (search,) = _results(out)["lr_search"]
    assert search["lr_grid_added"] == [] and search["selected"] == 0.001 and search["at_grid_end"] is None
    assert sorted({rate for rate, *_ in calls}) == [0.001, 0.002] and _results(out)["warnings"] == []


def test_resuming_with_a_larger_extension_trains_only_the_new_rates(rigged, tmp_path, capsys):
    calls = rigged(lambda rate: rate)  # higher is always better
    out = tmp_path / "resume"
    assert main(["compare", *TINY, "--lr-grid", "1e-3,2e-3", "--out", str(out)]) == 0
    assert "the highest rate tried" in (out / "report.md").read_text()
    first = len(calls)
    assert main(["compare", *TINY, "--lr-grid", "1e-3,2e-3", "--lr-grid-extend", "1", "--out", str(out),
                 "--resume"]) == 0
    assert [rate for rate, _, _, fresh in calls[first:] if fresh] == [0.004]  # the grid's runs were reused
    assert [rate for rate, _, on_test, _ in calls[first:] if on_test] == [0.004]
    (row,) = _results(out)["results"]
    assert row["learning_rate"] == 0.004
    # Lowering it would drop what the larger search found: refused, naming the setting.
    capsys.readouterr()
    assert main(["compare", *TINY, "--lr-grid", "1e-3,2e-3", "--out", str(out), "--resume"]) == 2
    assert "lr_grid_extend: 0 is below the 1" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--lr-grid-extend", "1"], ["lr_grid_extend", "--lr-grid"]),
    (["--lr-grid", "1e-3", "--lr-grid-extend", "1"], ["lr_grid_extend", "two or more"]),
    (["--lr-grid", "1e-3,2e-3", "--lr-grid-extend", "11"], ["lr_grid_extend", "0 to 10"]),
    (["--lr-grid", "1e-3,2e-3", "--lr-grid-extend", "-1"], ["lr_grid_extend"]),
])
def test_bad_extensions_are_refused_before_anything_is_written(args, words, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["compare", *TINY, *args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert all(word in error for word in words), error
    assert not out.exists() and not list(tmp_path.iterdir())
