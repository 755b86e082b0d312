"""Keep the study's small result files in the repository, so a run moved to another machine resumes.

The runs folder (``runs/study`` by default) holds, per part, the ``compare`` outputs: results,
one JSON file per finished run (``partial/``), tickets, the exact commands, and large files
(checkpoints, full fine-tuning weights). :func:`archive` copies the small ones into
``docs/results/raw/<setting>/<part>/...`` (results, per-run rows, tickets and their score
sidecars, commands, run records, base-weight norms, and the adapters the per-layer section
reads: LoRA's and Partial-LoRA's of the main part, at their selected rates). :func:`restore` copies them back
into a runs folder: finished parts are then reused as they are, and a part cut short resumes
from its finished runs (a run whose checkpoint did not travel is trained again, the same way).

    python -m studies.archive                      # runs/study -> docs/results/raw
    python -m studies.archive --restore            # docs/results/raw -> runs/study
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence

DEFAULT_RUNS = Path("runs/study")
DEFAULT_RAW = Path("docs/results/raw")
SMALL_FILES = ("results.json", "command.txt", "run.json", "base_norms.json", "report.md")
KEPT_ADAPTERS = ("lora", "partial-lora")  # what the per-layer update section reads
MAX_FILE_BYTES = 2_000_000
MAX_ADAPTER_BYTES = 4_000_000  # SmolLM2's LoRA r=8 weighs 2.6 MB; the per-layer section needs it


def small_files(runs: Path) -> Iterator[Path]:
    """The files under ``runs`` worth keeping (paths relative to ``runs``)."""
    for path in sorted(runs.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(runs)
        parts = relative.parts
        size = path.stat().st_size
        if "checkpoints" in parts or path.name.startswith(".") or path.name.endswith(".tmp"):
            continue
        if path.name in SMALL_FILES or path.parent.name == "partial" or path.name.startswith("ticket"):
            if size <= MAX_FILE_BYTES:
                yield relative
        elif "adapters" in parts and len(parts) > 1 and parts[1] == "main" and _kept_adapter(runs, relative):
            if size <= MAX_ADAPTER_BYTES:
                yield relative


def _kept_adapter(runs: Path, relative: Path) -> bool:
    """An adapter file of LoRA / Partial-LoRA at the rate its part reported (``<label>-lr<rate>``)."""
    index = relative.parts.index("adapters")
    label = relative.parts[index + 1]
    method = label.split("-seed")[0]
    if method not in KEPT_ADAPTERS:
        return False
    results = runs.joinpath(*relative.parts[:index]) / "results.json"
    if not results.is_file():
        return False
    rows = json.loads(results.read_text())["results"]
    reported = {f"{r['method']}-seed{r['seed']}-lr{r.get('lr_base', r['learning_rate']):g}" for r in rows}
    reported |= {f"{r['method']}-seed{r['seed']}" for r in rows}
    return label in reported


def archive(runs: Path, raw: Path) -> int:
    """Copy the small files of ``runs`` into ``raw`` (replacing what was there); returns how many."""
    count = 0
    for relative in small_files(runs):
        target = raw / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(runs / relative, target)
        count += 1
    return count


def restore(raw: Path, runs: Path) -> int:
    """Copy the archived files back into ``runs``, never over a file that is already there."""
    count = 0
    for path in sorted(raw.rglob("*")):
        if path.is_file():
            target = runs / path.relative_to(raw)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.archive", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--restore", action="store_true", help="copy the archived files back into --runs")
    args = parser.parse_args(argv)
    if args.restore:
        print(f"[archive] restored {restore(args.raw, args.runs)} files into {args.runs}")
    else:
        print(f"[archive] kept {archive(args.runs, args.raw)} files in {args.raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
