"""``cli``, ``cli-more``, ``cli-overwrite``: bad command lines.

Each is ``partial-lora run --out <case>/out`` with tiny settings (:data:`.common.TINY`) plus
the bad arguments, run in-process through ``partial_lora.cli.main`` on the packaged MiniLM
and BBC News. Clean: exit status 2, a message on stderr, no traceback, and no file created,
changed or removed in the case's folder (``--out`` included). ``cli`` is the issue's own list,
``cli-more`` more values of the same kind, ``cli-overwrite`` some of them again with
``--overwrite`` into an ``--out`` that holds an earlier run, which must survive.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .common import TINY, Section, Timer, differences, earlier_run, packaged_cache, run_cli, say, snapshot

from fixtures import news_rows, write_csv  # noqa: E402  (the tests' builders)

ISSUE_CLI_CASES = ["unknown dataset", "missing csv", "csv with a missing label", "missing column", "empty csv",
                   "class with fewer examples than --shots", "unknown method", "missing --model path",
                   "too-long --max-length", "--out is a file", "existing --out without --overwrite"]


def bad_command_lines(tmp: Path) -> dict[str, list[str]]:
    """name -> arguments after ``run --out <tmp>/out <TINY>`` (files made under ``tmp``)."""
    no_label = news_rows({"business": 6, "sport": 6})
    no_label[4]["label"] = ""
    (tmp / "empty.csv").write_text("text,label\n")
    (tmp / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    (tmp / "a-file").write_text("not a folder")
    (tmp / "existing").mkdir()
    (tmp / "existing" / "results.json").write_text('{"results": []}\n')
    (tmp / "existing" / "report.md").write_text("# an earlier run\n")
    (tmp / "bad.yaml").write_text("epochs: [1, 2\n")
    (tmp / "unknown.yaml").write_text("epochs: 1\nno_such_option: 3\n")
    (tmp / "broken-ticket.json").write_text("{not json")
    write_csv(tmp / "nolabel.csv", no_label)
    write_csv(tmp / "small.csv", news_rows({"business": 12, "rare": 5}))  # 2 test, 2 validation, 1 to train
    write_csv(tmp / "one-class.csv", news_rows({"business": 12}))
    model = ["--model", "minilm"]
    return {
        # the issue's list
        "unknown dataset": ["--dataset", "no-such-dataset"],
        "missing csv": ["--dataset", str(tmp / "missing.csv"), *model],
        "csv with a missing label": ["--dataset", str(tmp / "nolabel.csv"), *model],
        "missing column": ["--dataset", str(tmp / "nolabel.csv"), "--label-column", "topic", *model],
        "empty csv": ["--dataset", str(tmp / "empty.csv"), *model],
        "class with fewer examples than --shots": ["--dataset", str(tmp / "small.csv"), *model],
        "unknown method": ["--methods", "lora,magic"],
        "missing --model path": ["--model", str(tmp / "no-model")],
        "too-long --max-length": ["--max-length", "100000"],
        "--out is a file": ["--out", str(tmp / "a-file")],
        "existing --out without --overwrite": ["--out", str(tmp / "existing")],
        # more of the same kind
        "unreadable (binary) csv": ["--dataset", str(tmp / "binary.csv"), *model],
        "csv with one class": ["--dataset", str(tmp / "one-class.csv"), *model],
        "csv without --model": ["--dataset", str(tmp / "small.csv")],
        "dataset is a folder of nothing": ["--dataset", str(tmp), *model],
        "--shots 0": ["--shots", "0"],
        "--rank 0": ["--rank", "0"],
        "--epochs 0": ["--epochs", "0"],
        "--epochs not a number": ["--epochs", "three"],
        "--batch-size 0": ["--batch-size", "0"],
        "--threshold 1.5": ["--threshold", "1.5"],
        "--learning-rate nan": ["--learning-rate", "nan"],
        "--test-fraction 1.5": ["--test-fraction", "1.5"],
        "--max-length 0": ["--max-length", "0"],
        "--train-per-class 0": ["--train-per-class", "0"],
        "--config missing": ["--config", str(tmp / "missing.yaml")],
        "--config invalid yaml": ["--config", str(tmp / "bad.yaml")],
        "--config unknown option": ["--config", str(tmp / "unknown.yaml")],
        "--ticket missing": ["--ticket", str(tmp / "missing-ticket.json")],
        "--ticket not json": ["--ticket", str(tmp / "broken-ticket.json")],
        "unknown flag": ["--no-such-flag", "1"],
        # accepted by the settings, refused later (after a ticket or a model is built)
        "--weight-decay -1": ["--weight-decay", "-1"],
        "--warmup-ratio 1.5": ["--warmup-ratio", "1.5"],
        "--max-grad-norm -1": ["--max-grad-norm", "-1"],
        "--checkpoint-every 0": ["--checkpoint-every", "0"],
        "--seed -1": ["--seed", "-1"],
        "--alpha -1": ["--alpha", "-1"],
        "--target-modules no-such-layer": ["--target-modules", "no_such_layer"],
        "--ticket-method magic": ["--ticket-method", "magic"],
        "--metric magic": ["--metric", "magic"],
        "--methods empty": ["--methods", ","],
    }


# Bad inputs repeated with --overwrite into an --out that holds an earlier run: the earlier
# results must survive (the command checks its input before it clears --out).
OVERWRITE_CASES = ["missing csv", "class with fewer examples than --shots", "too-long --max-length", "--ticket missing",
                   "--ticket not json", "--weight-decay -1", "--checkpoint-every 0", "--seed -1",
                   "--target-modules no-such-layer", "--ticket-method magic"]


def run(args, work: Path) -> list[Section]:
    """Three sections: the issue's list, more bad values, and bad input with --overwrite."""
    sections = {"cli": Section("cli", "bad CLI inputs (the issue's list)"),
                "cli-more": Section("cli-more", "bad CLI inputs (more values)"),
                "cli-overwrite": Section("cli-overwrite", "bad CLI inputs with --overwrite of an earlier run")}
    only = args.case
    with packaged_cache(work):
        probe = work / "cli-probe"
        probe.mkdir(parents=True, exist_ok=True)
        names = [(name, False) for name in bad_command_lines(probe)] + [(name, True) for name in OVERWRITE_CASES]
        for index, (base_name, overwrite) in enumerate(names):
            name = f"{base_name} (--overwrite an earlier run)" if overwrite else base_name
            if only is not None and only not in (name, base_name):
                continue
            section = sections["cli-overwrite" if overwrite else "cli" if base_name in ISSUE_CLI_CASES else "cli-more"]
            tmp = work / f"cli-{index:02d}"
            tmp.mkdir(parents=True)
            argv = ["run", "--out", str(tmp / "out"), *TINY, *bad_command_lines(tmp)[base_name]]
            if overwrite:
                earlier_run(tmp / "out")
                argv.append("--overwrite")
            before = snapshot(tmp)
            with Timer(section):
                result = run_cli(argv)
            after = snapshot(tmp)
            problems = result.refusal_problems()
            folders = [k for k in set(after) - set(before) if k.endswith("/")]
            problems += differences(before, {k: v for k, v in after.items() if k not in folders})
            if folders and not problems:
                section.notes.append(f"cli '{name}': created the empty folder(s) {sorted(folders)} (no files)")
            section.record(name, f"cli '{name}'", problems,
                           f"python -m benchmarks.reliability --only cli --case '{name}' --keep   "
                           f"(runs: partial-lora {' '.join(argv)})")
            say("cli", f"{name}: exit {result.code}: {result.message()[:150]!r}{'  NOT CLEAN' if problems else ''}")
            if not args.keep and not problems:
                shutil.rmtree(tmp, ignore_errors=True)
    return [section for section in sections.values() if section.tried]
