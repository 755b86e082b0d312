"""``resume``: ``partial-lora run --resume`` with changed settings or data, and after SIGKILL.

A tiny run (a CSV of made-up articles, 3 classes, on the packaged MiniLM; LoRA and
Partial-LoRA, 2 epochs, a checkpoint after every step) is finished once in a child process:
the *reference*. Then:

* **changes** (``resume-changes``): a copy of the finished ``--out`` is resumed, in this
  process, with one setting changed (alpha, rank, learning rate, epochs, batch size, ...), the
  dataset's contents or split sizes changed, or settings that may change (more seeds,
  ``--checkpoint-every``, nothing). Clean: a change is refused (exit 2, a message naming it,
  ``--out`` byte-identical, no work folder); an allowed one is accepted (exit 0) and the
  earlier results and adapters are kept as they were.
* **kills** (``resume-kills``): the same run in a child ``partial-lora run``, killed with
  SIGKILL at a random moment (seeded, over the reference's duration), then ``--resume`` in
  this process. Clean: it finishes (exit 0, no work folder left) with the reference's results
  (every field but timings) and bit-identical adapters (``torch.equal`` on every tensor).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from pathlib import Path

from .common import (TINY, Section, Timer, cli_command, child_env, packaged_cache, run_cli, say, snapshot,
                     work_folders)

from fixtures import news_rows, write_csv  # noqa: E402  (the tests' builders)

TIMING = ("train_seconds", "peak_rss_bytes")
ARTICLES = {"business": 12, "sport": 12, "tech": 12}

# name -> (extra arguments, words the refusal must name); a change to the CSV file is named "data: ..."
REFUSED = {
    "alpha": (["--alpha", "32"], ["alpha"]),
    "rank": (["--rank", "4"], ["rank"]),
    "learning rate": (["--learning-rate", "0.01"], ["learning_rate"]),  # the default is 5e-3
    "epochs": (["--epochs", "3"], ["epochs"]),
    "batch size": (["--batch-size", "8"], ["batch_size"]),
    "weight decay": (["--weight-decay", "0.01"], ["weight_decay"]),
    "warm-up ratio": (["--warmup-ratio", "0.2"], ["warmup_ratio"]),
    "clipping norm": (["--max-grad-norm", "0.5"], ["max_grad_norm"]),
    "target modules": (["--target-modules", "query,value"], ["target_modules"]),
    "threshold": (["--threshold", "0.8"], ["threshold"]),
    "ticket method": (["--ticket-method", "uniform"], ["ticket_method"]),
    "shots": (["--shots", "3"], ["shots"]),
    "max length": (["--max-length", "24"], ["max_length"]),
    "seed": (["--seed", "1"], ["seed"]),
    "train split size": (["--train-per-class", "5"], ["train_per_class"]),
    "validation split size": (["--validation-per-class", "3"], ["validation_per_class"]),
    "test split size": (["--test-per-class", "3"], ["test_per_class"]),
    "seeds replaced, not extended (--seeds 1)": (["--seeds", "1"], ["seeds"]),
    "a method dropped (--methods lora)": (["--methods", "lora"], ["methods"]),
    "data: every article edited": ([], ["contents"]),
    "data: two classes' labels swapped": ([], ["contents"]),
    "data: label column renamed (with --label-column)": (["--label-column", "topic"], ["label_column"]),
}
ALLOWED = {
    "nothing changed": [],
    "checkpoint every 2 steps": ["--checkpoint-every", "2"],
    "the default alpha given": ["--alpha", "16"],
    "more seeds (--seeds 0,1)": ["--seeds", "0,1"],
    "data: the same file written again": [],
}


def write_articles(path: Path, change: str = "") -> None:
    rows = news_rows(ARTICLES)
    fields = None
    if change == "data: every article edited":
        rows = [dict(row, text=row["text"] + " (edited)") for row in rows]
    elif change == "data: two classes' labels swapped":
        swap = {"business": "sport", "sport": "business"}
        rows = [dict(row, label=swap.get(row["label"], row["label"])) for row in rows]
    elif change.startswith("data: label column renamed"):
        rows = [{"text": row["text"], "topic": row["label"]} for row in rows]
        fields = ["text", "topic"]
    write_csv(path, rows, fields)


def arguments(data: Path, out: Path) -> list[str]:
    return ["run", "--out", str(out), "--dataset", str(data), "--model", "minilm", *TINY, "--epochs", "2",
            "--checkpoint-every", "1", "--methods", "lora,partial-lora"]


def rows(out: Path) -> dict[tuple, dict]:
    """``{(method, seed): row without timings}`` of ``results.json``."""
    document = json.loads((out / "results.json").read_text())
    return {(r["method"], r["seed"]): {k: v for k, v in r.items() if k not in TIMING} for r in document["results"]}


def adapter_differences(want: Path, have: Path) -> list[str]:
    """Adapters of ``want`` whose tensors are not bit-identical in ``have``."""
    import torch
    from safetensors.torch import load_file

    problems = []
    for folder in sorted((want / "adapters").iterdir()):
        mine = have / "adapters" / folder.name / "adapter_model.safetensors"
        if not mine.is_file():
            problems.append(f"adapters/{folder.name} is missing")
            continue
        a, b = load_file(folder / "adapter_model.safetensors"), load_file(mine)
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            problems.append(f"adapters/{folder.name} differs from the uninterrupted run")
    return problems


def check_change(name: str, reference: Path, data: Path, folder: Path) -> list[str]:
    out = folder / "out"
    shutil.copytree(reference, out)
    before = snapshot(folder)
    refused = name in REFUSED
    extra = REFUSED[name][0] if refused else ALLOWED[name]
    if name.startswith("data:"):
        write_articles(data, name)
    try:
        result = run_cli([*arguments(data, out), *extra, "--resume"])
    finally:
        write_articles(data)
    if refused:
        problems = result.refusal_problems(REFUSED[name][1])
        if result.code == 0:
            problems.append("accepted; " + describe_changes(rows(reference), out))
        elif snapshot(folder) != before:
            problems.append("--out changed")
    else:
        problems = [] if result.code == 0 else [f"exit {result.code}: {result.message()[:300] or result.escaped}"]
        if result.code == 0:
            earlier, now = rows(reference), rows(out)
            lost = [key for key in earlier if now.get(key) != earlier[key]]
            if lost:
                problems.append(f"the earlier results of {lost} changed or went missing")
            problems += adapter_differences(reference, out)
    left = work_folders(out)
    if left:
        problems.append(f"left {left} beside --out")
    return problems


def describe_changes(earlier: dict, out: Path) -> str:
    try:
        now = rows(out)
    except (OSError, ValueError, KeyError) as err:
        return f"results.json unreadable afterwards ({err})"
    lost = sorted(set(earlier) - set(now))
    return f"results.json now holds {sorted(now)}" + (f"; the earlier rows {lost} are gone" if lost else "")


def kill_phase(out: Path) -> str:
    """Where a kill of ``partial-lora run --out out`` landed, from what it left."""
    work = out.parent / f".{out.name}.partial-lora-work"
    if not work.exists():
        return "committed" if (out / "results.json").exists() else "before the work folder"
    finished = sorted(p.stem for p in (work / "partial").glob("*.json")) if (work / "partial").is_dir() else []
    if (work / "results.json").exists():
        return "writing results and report"
    if not (work / "checkpoints").is_dir():
        return "set-up (data, model, ticket)"
    return f"training ({len(finished)} of 2 models finished)"


def kill_case(section: Section, case: int, seed: int, data: Path, reference: Path, duration: float,
              work: Path, keep: bool) -> None:
    rng = random.Random(f"{seed}-resume-kill-{case}")
    delay = rng.uniform(0.05, 1.0) * duration
    folder = work / f"kill-{case:02d}"
    out = folder / "out"
    folder.mkdir(parents=True)
    argv = arguments(data, out)
    process = subprocess.Popen(cli_command(*argv), env=child_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    finished = process.poll() is not None
    process.kill()
    _, err = process.communicate()
    if finished and process.returncode == 0:
        section.noop += 1
        say("resume", f"kill {case}: the run finished before the kill at {delay:.1f} s")
        return
    phase = "failed on its own" if finished else kill_phase(out)
    problems = [f"the run failed before the kill: {err[-400:]}"] if finished else []
    if not problems:
        result = run_cli([*argv, "--resume"])
        if result.code != 0:
            problems.append(f"--resume exit {result.code}: {result.message()[:300] or result.escaped}")
        else:
            want, have = rows(reference), rows(out)
            differ = [key for key in want if have.get(key) != want[key]]
            if differ or set(have) != set(want):
                problems.append(f"results differ from the uninterrupted run for {differ or sorted(have)}")
            problems += adapter_differences(reference, out)
        left = work_folders(out)
        if left:
            problems.append(f"left {left} beside --out")
    section.record(phase, f"resume kill {case} (seed {seed}): SIGKILL at {delay:.1f} s [{phase}]", problems,
                   f"python -m benchmarks.reliability --only resume --seed {seed} --case kill-{case} --keep   "
                   "(the moment depends on timing)")
    say("resume", f"kill {case} at {delay:.1f} s ({phase}): "
                  f"{'finished, bit-identical' if not problems else 'NOT CLEAN: ' + '; '.join(problems)}"[:300])
    if not keep and not problems:
        shutil.rmtree(folder, ignore_errors=True)


def run(args, work: Path) -> list[Section]:
    changes = Section("resume-changes", "--resume with changed settings or data")
    kills = Section("resume-kills", "`partial-lora run` killed (SIGKILL), then --resume")
    only = args.case
    with packaged_cache(work):
        data = work / "articles.csv"
        write_articles(data)
        reference = work / "reference" / "out"
        started = time.perf_counter()
        finished = subprocess.run(cli_command(*arguments(data, reference)), env=child_env(), capture_output=True,
                                  text=True)
        duration = time.perf_counter() - started
        if finished.returncode != 0:
            changes.record("reference", "the reference run", [f"failed: {finished.stderr[-800:]}"], "")
            return [changes]
        say("resume", f"reference run: {duration:.0f} s in a child process")
        with Timer(changes):
            for index, name in enumerate([*REFUSED, *ALLOWED]):
                if only is not None and only != name:
                    continue
                folder = work / f"change-{index:02d}"
                folder.mkdir(parents=True)
                problems = check_change(name, reference, data, folder)
                kind = "refused" if name in REFUSED else "allowed"
                changes.record(kind, f"resume '{name}' ({kind})", problems,
                               f"python -m benchmarks.reliability --only resume --case '{name}' --keep")
                say("resume", f"{name}: {'clean' if not problems else 'NOT CLEAN: ' + '; '.join(problems)}"[:300])
                if not args.keep and not problems:
                    shutil.rmtree(folder, ignore_errors=True)
        with Timer(kills):
            cases = [int(only.split("-")[1])] if only and only.startswith("kill-") else \
                [] if only is not None else range(args.resume_kills)
            for case in cases:
                kill_case(kills, case, args.seed, data, reference, duration, work, args.keep)
    kills.seconds += duration
    return [s for s in (changes, kills) if s.tried or s.noop]
