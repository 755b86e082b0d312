"""Bad input and failures at the command line: nothing the user had is lost, every cause refused.

The causes an outside fuzz found, one test each (at the CLI, the level users touch):

1. a run that is refused or fails at any point leaves the previous results byte-identical
   (the new run is written aside and swapped in only when it has finished);
2. YAML values go through the same parsing as flags, and errors name the key;
3. ``--resume`` continues only the run it was started as, and an interrupted first checkpoint
   is continued, not a dead end;
7. expected failures (unwritable folders, a run that diverges) are one message and exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

import partial_lora.commands.runs as runs_module
from partial_lora.cli import main
from partial_lora.ticket import Ticket
from partial_lora.training import TrainingDiverged

TINY = ["--train-per-class", "6", "--validation-per-class", "2", "--test-per-class", "2", "--epochs", "1",
        "--shots", "4", "--max-length", "16", "--quiet", "--methods", "lora,partial-lora"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARTIAL_LORA_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, cache_dir) -> Path:
    """A finished run: the results a later command must not cost."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    assert main(["run", "--out", str(out), *TINY]) == 0
    return out


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (and nothing beside it)."""
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    return files


def copy_of(earlier: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    return out


def foreign_ticket(run: Path, folder: Path) -> Path:
    """A ticket of another model (a layer this model does not have), written into ``folder``."""
    ticket = Ticket.load(run / "ticket.json")
    layers = {name.replace("encoder.layer.0.", "encoder.layer.99."): layer for name, layer in ticket.layers.items()}
    path = folder / "foreign" / "ticket.json"
    Ticket(layers, ticket.provenance).save(path)
    return path


LATE_CHECKS = {
    "one shot": ["--shots", "1"],
    "budget below one row and column": ["--budget", "1"],
    "infinite alpha": ["--alpha", "inf"],
    "seed beyond 32 bits": ["--seed", "4294967296"],
    "unknown modules-to-save": ["--modules-to-save", "nosuchmodule"],
    "causal-lm task on an encoder": ["--task", "causal-lm"],
    "ticket of another model": ["--ticket", "<foreign>"],
    "max-length beyond the positions": ["--max-length", "100000"],
    "adalora schedule too short": ["--methods", "adalora", "--train-per-class", "1", "--batch-size", "64"],
    "bad learning-rate grid": ["--lr-grid", "1e-3,-2"],
    "duplicate learning rates": ["--lr-grid", "1e-3,1e-3"],
}


@pytest.mark.parametrize("case", list(LATE_CHECKS))
def test_a_refused_overwrite_leaves_the_old_results_byte_identical(case, earlier, tmp_path, capsys):
    out = copy_of(earlier, tmp_path)
    before = snapshot(out)
    args = [str(foreign_ticket(out, tmp_path)) if a == "<foreign>" else a for a in LATE_CHECKS[case]]
    assert main(["run", "--out", str(out), *TINY, *args, "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert "error:" in error and "Traceback" not in error
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".out.partial-lora-*"))  # refused before any work began


def test_a_run_that_diverges_or_is_interrupted_leaves_the_old_results_and_can_be_resumed(
        earlier, tmp_path, capsys, monkeypatch):
    out = copy_of(earlier, tmp_path)
    before = snapshot(out)
    real_train = runs_module.train

    def diverging(*args, **kwargs):
        raise TrainingDiverged(3, float("nan"), "the loss is nan", None)

    monkeypatch.setattr(runs_module, "train", diverging)
    assert main(["run", "--out", str(out), *TINY, "--overwrite"]) == 2
    assert "diverged" in capsys.readouterr().err
    assert snapshot(out) == before

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second model: the first one's results are already written aside
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs_module, "train", interrupted)
    assert main(["run", "--out", str(out), *TINY, "--overwrite"]) == 130
    assert snapshot(out) == before
    work = tmp_path / ".out.partial-lora-work"
    assert work.is_dir()
    monkeypatch.setattr(runs_module, "train", real_train)
    # A plain rerun does not silently discard (or reuse) the interrupted work...
    assert main(["run", "--out", str(out), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    # ... --resume continues it, reusing the finished model, and only then replaces the old results.
    assert main(["run", "--out", str(out), *TINY, "--resume"]) == 0
    assert "already finished" not in capsys.readouterr().out  # --quiet; the results say it:
    assert not work.exists() and snapshot(out) != before
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {r["method"] for r in rows} == {"lora", "partial-lora"}


def test_overwrite_replaces_the_results_only_when_the_new_run_has_finished(earlier, tmp_path):
    out = copy_of(earlier, tmp_path)
    (out / "note-of-mine.txt").write_text("kept until the new run is in place")
    assert main(["run", "--out", str(out), *TINY, "--overwrite", "--seed", "1"]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {r["seed"] for r in rows} == {1}
    assert not (out / "note-of-mine.txt").exists()  # --overwrite means the folder is the new run's
    assert not list(tmp_path.glob(".out.partial-lora-w*")) and not list(tmp_path.glob(".out.partial-lora-old"))


# -- 2. YAML values are parsed as the flags are ------------------------------------------
def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("yaml_text, words", [
    ('overwrite: "false"\n', ["already holds results"]),  # "false" means false: nothing is overwritten
    ('resume: "no"\n', ["already holds results"]),
    ("overwrite: maybe\n", ["overwrite", "true or false"]),
    ("seed: 1\nseed: 2\n", ["seed", "more than once"]),
    ("learning_rate: 1e-3\nlearning-rate: 2e-3\n", ["learning_rate", "twice"]),
    ("a: &x [1]\nseeds: *x\n", ["aliases"]),
    ("out: !!binary aGVsbG8=\n", ["tags"]),
    ("seeds: [[0, 1]]\n", ["nest too deep"]),
    ("epochs: [1, 2]\n", ["epochs", "takes one value"]),
    ("learning_rate: fast\n", ["learning_rate", "expected a number"]),
    ("seeds: {a: 1}\n", ["seeds"]),
    ("epochs: true\n", ["epochs"]),
    ("shots:\n", ["shots", "no value"]),
])
def test_yaml_values_that_the_flags_would_refuse_are_refused_naming_the_key(
        yaml_text, words, earlier, tmp_path, capsys):
    out = copy_of(earlier, tmp_path)
    before = snapshot(out)
    config = write_yaml(tmp_path, yaml_text)
    assert main(["run", "--config", str(config), "--out", str(out), *TINY]) == 2
    error = capsys.readouterr().err
    for word in words:
        assert word in error, (word, error)
    assert snapshot(out) == before


def test_yaml_values_mean_what_the_same_flags_mean(tmp_path, cache_dir):
    from partial_lora.cli import build_parser, settings_from_args

    config = write_yaml(tmp_path, "learning_rate: 1e-3\nmodules_to_save: classifier\nmethods: [lora, partial-lora]\n"
                                  "seeds: 0,1\nout: 5\nlr_grid: [1e-3, 2e-3]\ntarget_modules: query,value\n"
                                  "seed: 010\noverwrite: yes\n")
    args = build_parser().parse_args(["compare", "--config", str(config)])
    settings = settings_from_args(args)
    assert settings.learning_rate == 1e-3 and settings.modules_to_save == ["classifier"]
    assert settings.methods == ["lora", "partial-lora"] and settings.seeds == [0, 1]
    assert settings.out == "5" and settings.lr_grid == [1e-3, 2e-3] and settings.target_modules == ["query", "value"]
    assert settings.seed == 10 and settings.overwrite is True  # as --seed 010 and the flag --overwrite


# -- 3. --resume verifies the run it continues --------------------------------------------
@pytest.mark.parametrize("change, words", [
    (["--alpha", "32"], ["alpha (16.0 then, 32.0 now)"]),
    (["--learning-rate", "0.01"], ["learning_rate"]),  # the default is 5e-3
    (["--test-per-class", "3"], ["test_per_class", "the test split's contents"]),
])
def test_resume_with_other_settings_or_data_is_refused_naming_what_changed(change, words, earlier, tmp_path, capsys):
    out = copy_of(earlier, tmp_path)
    before = snapshot(out)
    assert main(["run", "--out", str(out), *TINY, *change, "--resume"]) == 2
    error = capsys.readouterr().err
    for word in words:
        assert word in error, (word, error)
    assert snapshot(out) == before


def test_resume_of_a_changed_dataset_file_is_refused(tmp_path, cache_dir, capsys):
    from conftest import news_rows, write_csv

    data = write_csv(tmp_path / "news.csv", news_rows({"business": 12, "sport": 12}))
    args = ["--dataset", str(data), "--model", "minilm", *TINY, "--methods", "lora"]
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *args]) == 0
    rows = news_rows({"business": 12, "sport": 12})
    rows[3]["text"] = "a different article"
    write_csv(data, rows)
    assert main(["run", "--out", str(out), *args, "--resume"]) == 2
    assert "contents" in capsys.readouterr().err


def test_a_kill_during_the_first_checkpoint_is_continued_by_resume(earlier, tmp_path, capsys):
    """What a kill during the very first checkpoint leaves (a half-written checkpoint folder and
    no pointer) is continued by --resume, and no message suggests an option the CLI lacks."""
    work = tmp_path / ".out.partial-lora-work"
    shutil.copytree(earlier, work)
    (work / "results.json").unlink()
    (work / "report.md").unlink()
    for partial in (work / "partial").glob("lora*.json"):
        partial.unlink()
    lora_checkpoints = next((work / "checkpoints").glob("lora*")) / "checkpoint"
    shutil.rmtree(lora_checkpoints)
    (lora_checkpoints / "checkpoint-00000001.tmp").mkdir(parents=True)
    (lora_checkpoints / "checkpoint-00000001.tmp" / "model.safetensors").write_bytes(b"half")
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *TINY]) == 2
    error = capsys.readouterr().err
    assert "--resume" in error and "resume=False" not in error
    assert main(["run", "--out", str(out), *TINY, "--resume"]) == 0
    assert {r["method"] for r in json.loads((out / "results.json").read_text())["results"]} == {"lora", "partial-lora"}


# -- 7. expected failures are one message ------------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_folder_is_one_message(tmp_path, cache_dir, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["run", "--out", str(parent / "out"), *TINY]) == 2
        error = capsys.readouterr().err
        assert "permission denied" in error and "Traceback" not in error
    finally:
        parent.chmod(stat.S_IRWXU)


def test_a_file_where_a_folder_is_expected_is_one_message(tmp_path, cache_dir, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main(["run", "--out", str(tmp_path / "a-file" / "out"), *TINY]) == 2
    error = capsys.readouterr().err
    assert "a file stands where a folder is expected" in error and "Traceback" not in error


def test_results_get_the_permissions_a_plain_write_would_give(earlier):
    umask = os.umask(0)
    os.umask(umask)
    wrong = {str(p.relative_to(earlier)): oct(stat.S_IMODE(p.stat().st_mode)) for p in earlier.rglob("*")
             if stat.S_IMODE(p.stat().st_mode) != ((0o777 if p.is_dir() else 0o666) & ~umask)}
    assert not wrong


# -- two commands, one --out ------------------------------------------------------------
def test_a_second_command_writing_the_same_out_is_refused_until_the_first_has_finished(tmp_path):
    from partial_lora.commands.output import Output
    from partial_lora.commands.settings import Settings

    out = tmp_path / "out"
    first = Output(Settings(out=str(out)))
    work = first.open()
    (work / "results.json").write_text("{}")
    second = Output(Settings(out=str(out), overwrite=True))
    with pytest.raises(FileExistsError, match="another partial-lora command is writing it"):
        second.open()
    assert (work / "results.json").is_file()  # the second touched nothing of the first's work
    first.commit()
    assert (out / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the lock file went with the lock
    second.open()  # free again once the first has finished
    second.commit()
    with pytest.raises(RuntimeError), Output(Settings(out=str(out), overwrite=True)) as failing:
        failing.open()
        raise RuntimeError("a command failing half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-lora-work", "out"]  # kept for --resume
    Output(Settings(out=str(out), resume=True)).open()  # not locked by the failed command


def test_resume_may_add_seeds_but_not_drop_them(earlier, tmp_path, capsys):
    out = copy_of(earlier, tmp_path)
    before = snapshot(out)
    assert main(["run", "--out", str(out), *TINY, "--seeds", "1", "--resume"]) == 2
    assert "seeds: [0] no longer given" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_write_error_inside_safetensors_is_reported_as_what_it_is():
    from partial_lora.cli import expected_failure

    class SafetensorError(Exception):
        pass

    assert "no space left" in expected_failure(SafetensorError("Error while serializing: IoError(No space left on "
                                                               "device (os error 28))"))
    assert "damaged" in expected_failure(SafetensorError("Error while deserializing header: HeaderTooLarge"))
