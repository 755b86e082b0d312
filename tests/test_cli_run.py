"""The ``partial-lora`` command at the level a user touches it, on tiny slices of the packaged data.

A tiny ``run`` (MiniLM on BBC News, a few examples per class, one epoch) and a tiny ``train``
are made once per module and shared; every other test reads them or works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from partial_lora.cli import main
from conftest import news_rows, write_csv

# The smallest slice that still gives a meaningful ticket (the probe needs >= 2 shots per half).
TINY = ["--train-per-class", "6", "--validation-per-class", "2", "--test-per-class", "2", "--epochs", "1", "--shots", "4",
        "--max-length", "16", "--quiet"]
ROW_KEYS = ("method", "seed", "accuracy", "macro_f1", "trainable_params", "optimizer_state_bytes",
            "adapter_bytes", "train_seconds", "peak_rss_bytes")
RESULT_NAMES = ("results.json", "report.md", "ticket.json", "adapters", "metric_vs_params.png", "keep_ratios.png")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """``PARTIAL_LORA_CACHE`` in a temporary folder for the whole module (nothing in the home folder)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARTIAL_LORA_CACHE", str(folder))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs") / "a"
    assert main(["run", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """``train`` of Partial-LoRA on q/v: the folder and its adapter."""
    out = tmp_path_factory.mktemp("train") / "t"
    assert main(["train", "--out", str(out), "--method", "partial-lora", "--target-modules", "query,value",
                 *TINY]) == 0
    return out, out / "adapters" / "partial-lora"


def results_of(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["results"]


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def fresh_minilm(num_labels: int = 5):
    from partial_lora.models import load_model

    model, tokenizer = load_model("minilm", task="classification", num_labels=num_labels)
    return model, tokenizer


def sample_batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["Shares in the bank rose after strong profits.", "The striker scored twice in the final.",
             "The new phone has a faster chip."]
    return dict(tokenizer(texts, truncation=True, max_length=16, padding=True, return_tensors="pt"))


# -- run -------------------------------------------------------------------------------
def test_run_writes_results_report_plots_ticket_and_adapters(finished_run):
    for name in RESULT_NAMES:
        assert (finished_run / name).exists(), name
    rows = results_of(finished_run)
    assert [row["method"] for row in rows] == ["lora", "partial-lora"]
    for row in rows:
        for key in ROW_KEYS:
            assert row.get(key) is not None, key
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
        assert row["seed"] == 0
        assert row["trainable_params"] > 0 and row["adapter_bytes"] > 0 and row["optimizer_state_bytes"] > 0
        assert row["train_seconds"] > 0 and row["peak_rss_bytes"] > 0
    lora, partial = rows
    assert partial["trainable_params"] < lora["trainable_params"]
    assert partial["adapter_bytes"] < lora["adapter_bytes"]
    assert (finished_run / "adapters" / "lora-seed0" / "adapter_model.safetensors").is_file()
    assert (finished_run / "adapters" / "partial-lora-seed0" / "adapter_model.safetensors").is_file()
    ticket = json.loads((finished_run / "ticket.json").read_text())
    ratios = {name: layer["keep_ratio"] for name, layer in ticket["layers"].items()}
    assert len(ratios) == 18 and all(0 < r <= 1 for r in ratios.values())  # q, k, v of 6 layers
    report = (finished_run / "report.md").read_text()
    assert "partial-lora" in report and "metric_vs_params.png" in report
    assert (finished_run / "metric_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert (finished_run / "keep_ratios.png").read_bytes()[:4] == b"\x89PNG"


def test_run_into_a_folder_with_results_is_refused_without_overwrite(finished_run, capsys):
    before = (finished_run / "results.json").read_bytes()
    files = {p: p.stat().st_mtime_ns for p in files_under(finished_run)}
    assert main(["run", "--out", str(finished_run), *TINY]) == 2
    err = capsys.readouterr().err
    assert "already holds results" in err and "--overwrite" in err
    assert (finished_run / "results.json").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in files_under(finished_run)} == files


def test_resume_after_a_finished_run_reuses_its_results(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    before = results_of(out)
    adapters = {p: p.stat().st_mtime_ns for p in (out / "adapters").rglob("*.safetensors")}
    assert main(["run", "--out", str(out), "--resume", *TINY]) == 0
    assert results_of(out) == before  # the same rows, train_seconds included: nothing was retrained
    assert {p: p.stat().st_mtime_ns for p in (out / "adapters").rglob("*.safetensors")} == adapters


def _interrupted_before_partial_lora(finished_run: Path, out: Path) -> list[dict]:
    """A copy of the finished run as if stopped after LoRA: Partial-LoRA (which needs the ticket) is to train."""
    shutil.copytree(finished_run, out)
    before = results_of(out)
    for name in ("results.json", "report.md"):
        (out / name).unlink()
    (out / "partial" / "partial-lora-seed0.json").unlink()
    shutil.rmtree(out / "adapters" / "partial-lora-seed0")
    return before


def test_resume_continues_an_interrupted_run(finished_run, tmp_path):
    """A run stopped after LoRA finished: --resume keeps LoRA's result and finishes Partial-LoRA."""
    out = tmp_path / "interrupted"
    expected = adapter_tensors(finished_run / "adapters" / "partial-lora-seed0")
    before = _interrupted_before_partial_lora(finished_run, out)
    assert main(["run", "--out", str(out), "--resume", *TINY]) == 0
    after = results_of(out)
    assert after[0] == before[0]  # LoRA's row reused as it was
    assert after[1]["method"] == "partial-lora"
    assert after[1]["accuracy"] == before[1]["accuracy"]
    assert after[1]["trainable_params"] == before[1]["trainable_params"]
    again = adapter_tensors(out / "adapters" / "partial-lora-seed0")
    assert again.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(again[name], tensor), name


def _counting_find_ticket(monkeypatch) -> list[int]:
    from partial_lora.commands import runs

    calls, real = [], runs.find_ticket
    monkeypatch.setattr(runs, "find_ticket", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_resume_reads_the_saved_ticket_instead_of_deriving_it_again(finished_run, tmp_path, monkeypatch):
    """Deriving is deterministic, so the interrupted run's ticket is the ticket: --resume reads it
    (a SmolLM2 ticket costs about 13 minutes a seed here) and trains to the same result."""
    out = tmp_path / "interrupted"
    before = _interrupted_before_partial_lora(finished_run, out)
    calls = _counting_find_ticket(monkeypatch)
    assert main(["run", "--out", str(out), "--resume", *TINY]) == 0
    assert calls == []
    after = results_of(out)
    assert after[1]["accuracy"] == before[1]["accuracy"]
    assert after[1]["test_correct"] == before[1]["test_correct"]
    assert (out / "ticket.json").read_bytes() == (finished_run / "ticket.json").read_bytes()


def test_compare_resume_reads_every_ticket_of_its_seeds_and_thresholds(tmp_path, cache_dir, monkeypatch):
    """Four tickets (seeds 0, 1 x thresholds 0.8, 0.9): ticket.json and three under tickets/;
    a resume that still has one model to train reads all four back, each from its own file."""
    out = tmp_path / "sweep"
    argv = ["compare", "--methods", "partial-lora", "--thresholds", "0.8,0.9", "--seeds", "0,1", "--out", str(out),
            *TINY]
    assert main(argv) == 0
    tickets = {p.relative_to(out): p.read_bytes() for p in [out / "ticket.json", *(out / "tickets").glob("*.json")]}
    assert len(tickets) == 4
    before = results_of(out)
    (out / "partial" / "partial-lora-tau0.9-seed1.json").unlink()
    (out / "results.json").unlink()
    calls = _counting_find_ticket(monkeypatch)
    assert main([*argv, "--resume"]) == 0
    assert calls == []
    assert [r["test_correct"] for r in results_of(out)] == [r["test_correct"] for r in before]
    assert {name: (out / name).read_bytes() for name in tickets} == tickets


def test_train_resume_reads_its_saved_ticket_too(trained, tmp_path, monkeypatch):
    folder, _ = trained
    out = tmp_path / "t"
    shutil.copytree(folder, out)
    (out / "results.json").unlink()
    calls = _counting_find_ticket(monkeypatch)
    assert main(["train", "--out", str(out), "--method", "partial-lora", "--target-modules", "query,value",
                 *TINY, "--resume"]) == 0
    assert calls == []
    assert results_of(out) == results_of(folder)


@pytest.mark.parametrize("spoil", ["damaged", "another seed", "another metric", "scores missing"])
def test_resume_derives_again_a_saved_ticket_that_is_damaged_or_was_made_otherwise(
        spoil, finished_run, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    before = _interrupted_before_partial_lora(finished_run, out)
    saved = out / "ticket.json"
    if spoil == "damaged":
        saved.write_text('{"format": ')
    elif spoil in ("another seed", "another metric"):
        document = json.loads(saved.read_text())
        document["provenance"].update({"seed": 7} if spoil == "another seed" else {"metric": "macro_f1"})
        saved.write_text(json.dumps(document))
    else:
        (out / "ticket.scores.safetensors").unlink()
    calls = _counting_find_ticket(monkeypatch)
    assert main(["run", "--out", str(out), "--resume", *TINY]) == 0
    assert calls == [1]
    assert results_of(out)[1]["test_correct"] == before[1]["test_correct"]
    from partial_lora import Ticket

    assert Ticket.load(saved).fingerprint() == Ticket.load(finished_run / "ticket.json").fingerprint()


def test_the_same_command_twice_gives_the_same_ticket_masks_and_metrics(finished_run, tmp_path, cache_dir):
    """Second run through the installed console script, in a new process and a new folder."""
    script = Path(sys.executable).with_name("partial-lora")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "partial_lora.cli"]
    out = tmp_path / "b"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PARTIAL_LORA_CACHE=str(cache_dir),
               OMP_NUM_THREADS="1")
    result = subprocess.run([*command, "run", "--out", str(out), *TINY], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results.json" in result.stdout

    first, second = (json.loads((folder / "ticket.json").read_text())["layers"] for folder in (finished_run, out))
    assert {n: layer["keep_ratio"] for n, layer in first.items()} == {n: layer["keep_ratio"] for n, layer in second.items()}
    scores = [load_file(str(folder / "ticket.scores.safetensors")) for folder in (finished_run, out)]
    assert scores[0].keys() == scores[1].keys()
    for name in scores[0]:
        assert torch.equal(scores[0][name], scores[1][name]), name
    for label in ("lora-seed0", "partial-lora-seed0"):
        a, b = adapter_tensors(finished_run / "adapters" / label), adapter_tensors(out / "adapters" / label)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (label, name)
    masks = [name for name in adapter_tensors(out / "adapters" / "partial-lora-seed0") if name.endswith("lora_rows")]
    assert masks  # the Partial-LoRA masks are stored, and compared above
    metrics = ("method", "seed", "accuracy", "macro_f1", "trainable_params", "optimizer_state_bytes", "adapter_bytes")
    assert [{k: r[k] for k in metrics} for r in results_of(finished_run)] == \
        [{k: r[k] for k in metrics} for r in results_of(out)]


def test_overwrite_with_bad_input_keeps_the_old_results(finished_run, tmp_path, capsys):
    out = tmp_path / "kept"
    shutil.copytree(finished_run, out)
    files = {p: p.read_bytes() for p in files_under(out)}
    missing = tmp_path / "missing.csv"
    assert main(["run", "--out", str(out), "--overwrite", "--dataset", str(missing), "--model", "minilm", *TINY]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--overwrite", *TINY, "--shots", "7"]) == 2
    assert "shots" in capsys.readouterr().err  # 6 training examples per class, 7 shots asked for
    assert {p: p.read_bytes() for p in files_under(out)} == files


def test_overwrite_replaces_every_output_of_the_old_run_plots_included(finished_run, tmp_path):
    out = tmp_path / "replaced"
    shutil.copytree(finished_run, out)
    assert main(["run", "--out", str(out), "--overwrite", "--methods", "lora", *TINY]) == 0
    assert [row["method"] for row in results_of(out)] == ["lora"]
    # No ticket this time: the old ticket, its plot and Partial-LoRA's adapter must not linger.
    assert not (out / "keep_ratios.png").exists() and not (out / "ticket.json").exists()
    assert not (out / "adapters" / "partial-lora-seed0").exists()
    assert (out / "metric_vs_params.png").is_file()


# -- ticket ----------------------------------------------------------------------------
def test_ticket_command_writes_the_ticket_and_its_plot(tmp_path, cache_dir, capsys):
    out = tmp_path / "ticket"
    argv = ["ticket", "--out", str(out), "--shots", "4", "--max-length", "16", "--target-modules", "query", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    ticket = json.loads((out / "ticket.json").read_text())
    assert (out / "keep_ratios.png").read_bytes()[:4] == b"\x89PNG"
    names = sorted(ticket["layers"])
    assert len(names) == 6 and all(name.endswith("attention.self.query") for name in names)
    assert all(0 < layer["keep_ratio"] <= 1 for layer in ticket["layers"].values())
    assert names[0] in printed
    assert ticket["provenance"]["shots"] == 4 and ticket["provenance"]["seed"] == 0
    before = (out / "ticket.json").read_bytes()
    assert main(argv) == 2  # (--overwrite itself is exercised on export, which is cheaper)
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "ticket.json").read_bytes() == before
    assert main(["ticket", "--compare", str(out / "ticket.json"), str(out / "ticket.json")]) == 0
    assert json.loads(capsys.readouterr().out)


# -- train, eval, export, merge ----------------------------------------------------------
def test_train_saves_an_adapter_and_its_result(trained):
    out, adapter = trained
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (out / "ticket.json").is_file()
    (row,) = results_of(out)
    assert row["method"] == "partial-lora" and 0 <= row["accuracy"] <= 1
    names = adapter_tensors(adapter)
    assert any("query" in name for name in names) and any("value" in name for name in names)
    assert not any(".key." in name for name in names)
    assert any(name.startswith("modules_to_save.classifier") for name in names)


def test_eval_reproduces_the_training_metrics(trained, capsys):
    out, adapter = trained
    (row,) = results_of(out)
    assert main(["eval", str(adapter), "--quiet"]) == 0  # the test-split size comes from the adapter
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(row["accuracy"], abs=1e-6)
    assert metrics["macro_f1"] == pytest.approx(row["macro_f1"], abs=1e-6)


def test_export_gives_a_peft_folder_with_the_same_logits(trained, tmp_path):
    from peft import PeftModel

    import partial_lora

    _, adapter = trained
    out = tmp_path / "peft"
    assert main(["export", str(adapter), "--out", str(out), "--quiet"]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    base, tokenizer = fresh_minilm()
    batch = sample_batch(tokenizer)
    ours = partial_lora.load(base, str(adapter)).eval()
    peft_base, _ = fresh_minilm()
    theirs = PeftModel.from_pretrained(peft_base, str(out)).eval()
    with torch.no_grad():
        expected, got = ours(**batch).logits, theirs(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    with torch.no_grad():
        plain = fresh_minilm()[0](**batch).logits
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter and head really changed something


def test_export_into_a_folder_with_an_export_is_refused(trained, tmp_path, capsys):
    _, adapter = trained
    out = tmp_path / "peft"
    assert main(["export", str(adapter), "--out", str(out), "--quiet"]) == 0
    files = {p: p.read_bytes() for p in files_under(out)}
    assert main(["export", str(adapter), "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in files_under(out)} == files
    assert main(["export", str(adapter), "--out", str(out), "--overwrite", "--quiet"]) == 0


def test_merge_writes_a_plain_model_with_the_same_logits(trained, tmp_path):
    import partial_lora
    from partial_lora.models import load_model

    _, adapter = trained
    out = tmp_path / "merged"
    assert main(["merge", str(adapter), "--out", str(out), "--quiet"]) == 0
    merged, tokenizer = load_model(str(out), task="classification", num_labels=5)
    assert merged.partial_lora_new_modules == []  # the trained head is in the merged folder
    assert not partial_lora.adapter_layers(merged)
    base, _ = fresh_minilm()
    batch = sample_batch(tokenizer)
    with torch.no_grad():
        expected = partial_lora.load(base, str(adapter)).eval()(**batch).logits
        got = merged(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_eval_of_a_missing_adapter_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(out), "--quiet"]) == 2
    assert not files_under(out)


# -- bad input -------------------------------------------------------------------------
def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, words the error must contain)."""
    no_label = news_rows({"business": 6, "sport": 6})
    no_label[4]["label"] = ""
    (tmp / "empty.csv").write_text("text,label\n")
    (tmp / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    (tmp / "a-file").write_text("not a folder")
    model = ["--model", "minilm"]
    return {
        "unknown dataset": (["--dataset", "no-such-dataset"], ["no-such-dataset", "not a packaged dataset"]),
        "missing csv": (["--dataset", str(tmp / "missing.csv"), *model], ["missing.csv", "no such file"]),
        "missing label": (["--dataset", str(write_csv(tmp / "nolabel.csv", no_label)), *model],
                          ["nolabel.csv", "example 5 has no label"]),
        "missing column": (["--dataset", str(tmp / "nolabel.csv"), "--label-column", "topic", *model],
                           ["'topic'", "--label-column"]),
        "empty dataset": (["--dataset", str(tmp / "empty.csv"), *model], ["empty.csv", "no examples"]),
        "unreadable file": (["--dataset", str(tmp / "binary.csv"), *model], ["binary.csv", "cannot read"]),
        "too few for the shots": (
            ["--dataset", str(write_csv(tmp / "small.csv", news_rows({"business": 12, "rare": 5}))), *model],
            ["'rare'", "shots"]),
        "unknown method": (["--methods", "lora,magic"], ["magic", "unknown method"]),
        "no methods": (["--methods", ","], ["methods is empty"]),
        "unknown metric": (["--metric", "magic"], ["metric='magic'", "accuracy"]),
        "missing model": (["--model", str(tmp / "no-model")], ["--model", "no-model"]),
        "too long max length": (["--max-length", "100000"], ["--max-length", "exceeds the model's maximum of 512"]),
        "out is a file": (["--out", str(tmp / "a-file")], ["a-file", "is a file"]),
    }


BAD = ["unknown dataset", "missing csv", "missing label", "missing column", "empty dataset", "unreadable file",
       "too few for the shots", "unknown method", "no methods", "unknown metric", "missing model", "too long max length", "out is a file"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, tmp_path, cache_dir, capsys):
    args, words = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    argv = ["run", "--out", str(out), *TINY, *args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    for word in words:
        assert word in captured.err, (word, captured.err)
    assert "Traceback" not in captured.err
    assert not out.exists()  # not even an empty folder


def test_train_with_an_unknown_method_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--out", str(out), "--method", "magic", *TINY]) == 2
    assert "magic" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_lists_the_commands():
    script = Path(sys.executable).with_name("partial-lora")
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("run", "ticket", "train", "eval", "export", "merge", "compare"):
        assert command in result.stdout

def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: partial-lora" in capsys.readouterr().out


def test_validation_is_scored_after_the_last_epoch_unless_asked_for_every_epoch(tmp_path, cache_dir):
    """By default the validation split is scored once, after the last epoch (the row's
    ``validation_accuracy`` is that score); ``--validate-every-epoch`` scores it after every
    epoch, and only changes what is reported, so a run may be resumed with or without it."""
    def epochs_validated(out: Path) -> list[int]:
        (history,) = json.loads((out / "results.json").read_text())["histories"].values()
        assert [entry["epoch"] for entry in history] == [1, 2]
        return [entry["epoch"] for entry in history if "eval_accuracy" in entry]

    common = ["compare", "--methods", "lora", *TINY, "--epochs", "2"]
    last_only, every = tmp_path / "last", tmp_path / "every"
    assert main([*common, "--out", str(last_only)]) == 0
    assert main([*common, "--out", str(every), "--validate-every-epoch"]) == 0
    assert epochs_validated(last_only) == [2] and epochs_validated(every) == [1, 2]
    # Same training either way: the same final validation score and test predictions.
    (a,), (b,) = results_of(last_only), results_of(every)
    assert a["validation_accuracy"] is not None and a["test_correct"]
    assert a["validation_accuracy"] == b["validation_accuracy"] and a["test_correct"] == b["test_correct"]
    assert main([*common, "--out", str(last_only), "--resume", "--validate-every-epoch"]) == 0
    assert results_of(last_only)[0]["test_correct"] == a["test_correct"] and epochs_validated(last_only) == [2]
    # `train` keeps its history too, so the flag is not lost on it.
    trained = tmp_path / "train"
    assert main(["train", "--method", "lora", *TINY, "--epochs", "2", "--out", str(trained),
                 "--validate-every-epoch"]) == 0
    assert epochs_validated(trained) == [1, 2]
