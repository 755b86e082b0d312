"""Run the Partial-LoRA study and write docs/RESULTS.md with its plots.

    python -m studies.study                                  # everything (hours on 2 CPU cores)
    python -m studies.study --settings mnist --parts main,matched
    python -m studies.study --document-only                  # rewrite the document from the runs
    python -m studies.study --smoke --runs /tmp/s --doc /tmp/s/RESULTS.md   # tiny version (CI)

Every part is a ``partial-lora`` command (see :mod:`studies.plan`) whose output folder is
``--runs/<setting>/<part>/``, with the exact command in ``command.txt`` next to it. A part whose
results exist is reused; one cut short resumes (``compare --resume``). The document is then
written from whatever the runs folder holds, and says which parts are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from partial_lora.cli import main as partial_lora_main

from . import plan
from .document import write_document
from .runs import adapter_budget, command_option, load_setting_runs, main_tickets, matched_rank, methods_added

DEFAULT_RUNS = Path("runs/study")
DEFAULT_DOC = Path("docs/RESULTS.md")
TICKET_SHOTS = {False: 16, True: 2}  # shots per class of the ticket-method comparison (full study, smoke)


def part_commands(setting: plan.Setting, part: str, runs: Path, *, seeds: Sequence[int], smoke: bool) -> list[list[str]]:
    """The ``partial-lora`` argument lists of one part (several for ``pareto``, ``ranks`` and ``tickets``)."""
    out = runs / setting.dataset / part
    common = ["--dataset", setting.dataset, *setting.extra_args, *(plan.SMOKE_DATA_ARGS if smoke else ())]
    seed_list = ",".join(map(str, seeds))
    grid = ",".join(f"{rate:g}" for rate in setting.lr_grid)

    def compare(folder: Path, *options: str) -> list[str]:
        extend = ["--lr-grid-extend", str(setting.lr_grid_extend)] if setting.lr_grid_extend else []
        return ["compare", *common, *(plan.SMOKE_TRAIN_ARGS if smoke else ()), "--seeds", seed_list,
                "--lr-grid", grid, "--lr-grid-seeds", "1", *extend, "--out", str(folder), "--resume", *options]

    if part == "main":
        return [compare(out, "--methods", ",".join(setting.methods))]
    if part == "pareto":  # one compare per family of points, each in its own folder
        commands = [compare(out / "lora-ranks", "--methods", "lora", "--ranks", ",".join(map(str, setting.pareto_ranks))),
                    compare(out / "partial-thresholds", "--methods", "partial-lora,uniform" if setting.dataset != "bbc-gen"
                            else "partial-lora", "--thresholds", ",".join(map(str, setting.pareto_thresholds)))]
        for rank in setting.pareto_masking_ranks:
            budget = adapter_budget(runs / setting.dataset / "main", rank)
            commands.append(compare(out / f"random-masking-r{rank}", "--methods", "random-masking", "--budget", str(budget)))
        return commands
    if part == "matched":
        rank = matched_rank(runs / setting.dataset / "main")
        return [compare(out, "--methods", "lora", "--rank", str(rank))]
    if part == "thresholds":
        return [compare(out, "--methods", "partial-lora", "--threshold-mode", "absolute",
                        "--thresholds", ",".join(map(str, plan.ABSOLUTE_THRESHOLDS)))]
    if part == "ranks":  # one compare per method and rank, each in its own folder
        return [compare(out / f"{method}-r{rank}", "--methods", method, "--rank", str(rank))
                for method, rank in plan.RANK_SWEEP.items()]
    if part == "tickets":
        default_shots = TICKET_SHOTS[smoke]
        jobs = [("svd", shots, seed) for shots in setting.shots for seed in seeds]
        jobs += [(method, default_shots, seed) for method in setting.ticket_methods if method != "svd" for seed in seeds]
        commands = []
        for method, shots, seed in jobs:
            folder = out / f"{method}-shots{shots}-seed{seed}"
            commands.append(["ticket", *common, "--ticket-method", method, "--shots", str(shots), "--seed", str(seed),
                             "--out", str(folder), "--overwrite"])
        return commands
    raise ValueError(f"unknown part {part!r}; choose from {', '.join(plan.PARTS)}")


def _finished(argv: list[str]) -> bool:
    """The command's results exist, and a compare's were made with (at least) its grid extension.

    A compare finished before ``--lr-grid-extend`` was given is run again with ``--resume``:
    its runs are reused and only the searches that chose an end of the grid train more.
    """
    out = Path(command_option(argv, "--out"))
    if argv[0] != "compare":
        return (out / "ticket.json").is_file()
    if not (out / "results.json").is_file():
        return False
    extend = int(command_option(argv, "--lr-grid-extend", "0"))
    settings = json.loads((out / "results.json").read_text()).get("settings", {})
    covered = not methods_added(argv, settings)  # a plan that added methods runs again
    return covered and (settings.get("lr_grid_extend") or 0) >= extend


def _claim(folder: Path) -> bool:
    """Take ``folder/.running`` for this process; False if another live process holds it.

    Lets several ``studies.study`` processes share one runs folder (e.g. one per core, each
    with ``OMP_NUM_THREADS=1``): a part being run elsewhere is skipped, not run twice.
    """
    lock = folder / ".running"
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text() or 0)
                os.kill(holder, 0)
                return False  # alive
            except (ValueError, ProcessLookupError):
                lock.unlink(missing_ok=True)  # left by a process that died
                continue
            except PermissionError:
                return False
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        return True


def run_part(setting: plan.Setting, part: str, runs: Path, *, seeds: Sequence[int], smoke: bool, quiet: bool) -> None:
    try:
        commands = part_commands(setting, part, runs, seeds=seeds, smoke=smoke)
    except FileNotFoundError as missing:  # matched and pareto need main's results (perhaps being run elsewhere)
        print(f"[study] {setting.dataset}/{part} skipped: {missing}", flush=True)
        return
    folder = runs / setting.dataset / part
    folder.mkdir(parents=True, exist_ok=True)
    if all(_finished(argv) for argv in commands):
        _write_commands(folder, commands)
        _record_extras(setting, part, folder)
        return
    if not _claim(folder):
        print(f"[study] {setting.dataset}/{part} is being run by another process; skipped", flush=True)
        return
    try:
        _run_commands(setting, part, folder, commands, quiet=quiet)
    finally:
        (folder / ".running").unlink(missing_ok=True)


def _write_commands(folder: Path, commands: list[list[str]]) -> None:
    (folder / "command.txt").write_text("\n".join("partial-lora " + shlex.join(c) for c in commands) + "\n")


def _run_commands(setting: plan.Setting, part: str, folder: Path, commands: list[list[str]], *, quiet: bool) -> None:
    _write_commands(folder, commands)
    for argv in commands:
        if _finished(argv):
            continue
        started = time.perf_counter()
        print(f"[study] partial-lora {shlex.join(argv)}", flush=True)
        status = partial_lora_main([*argv, *(["--quiet"] if quiet else [])])
        if status != 0:
            raise SystemExit(f"[study] failed ({status}): partial-lora {shlex.join(argv)}")
        print(f"[study] done in {time.perf_counter() - started:.0f} s", flush=True)
    _record_extras(setting, part, folder)


def _record_extras(setting: plan.Setting, part: str, folder: Path) -> None:
    if part == "main" and not (folder / "base_norms.json").is_file():
        record_base_norms(setting, folder)


def record_base_norms(setting: plan.Setting, folder: Path) -> None:
    """``base_norms.json``: ``{layer: ||W||_F}`` of the pretrained target layers (for item 8)."""
    import torch

    from partial_lora.commands.settings import Settings, resolve
    from partial_lora.layer import base_shape
    from partial_lora.models import load_model

    tickets = main_tickets(folder)
    if not tickets:
        return
    resolved = resolve(Settings(dataset=setting.dataset))
    model, _ = load_model(resolved.model, task=resolved.task, num_labels=None if resolved.task == "causal-lm" else 2)
    modules = dict(model.named_modules())
    norms = {}
    for name in tickets[0].layers:
        weight = modules[name].weight.detach().double()
        norms[name] = float(torch.linalg.vector_norm(weight.reshape(base_shape(modules[name]))))
    (folder / "base_norms.json").write_text(json.dumps(norms, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.study", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=None, help="comma-separated settings (default: all of the plan)")
    parser.add_argument("--parts", default=None, help=f"comma-separated parts (default: each setting's; {plan.PARTS})")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; smoke 0,1)")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where the runs go (default runs/study)")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="the document to write (default docs/RESULTS.md)")
    parser.add_argument("--smoke", action="store_true", help="tiny slices, 2 seeds: a check that every part works")
    parser.add_argument("--document-only", action="store_true", help="write the document from existing runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    catalogue = plan.SMOKE_SETTINGS if args.smoke else plan.SETTINGS
    names = args.settings.split(",") if args.settings else list(catalogue)
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {', '.join(catalogue)}")
    parts = args.parts.split(",") if args.parts else None
    if parts and any(p not in plan.PARTS for p in parts):
        parser.error(f"unknown part(s) in {parts}; choose from {', '.join(plan.PARTS)}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ([0, 1] if args.smoke else list(plan.SEEDS))
    if not args.document_only:
        for name in names:
            setting = catalogue[name]
            for part in setting.parts:
                if parts is None or part in parts:
                    run_part(setting, part, args.runs, seeds=seeds, smoke=args.smoke, quiet=args.quiet)
    loaded = {name: load_setting_runs(catalogue[name], args.runs) for name in catalogue}
    path = write_document(loaded, args.doc, smoke=args.smoke, invocation=_invocation(argv), runs_folder=args.runs,
                          ticket_shots=TICKET_SHOTS[args.smoke])
    print(f"[study] wrote {path}")
    return 0


def _invocation(argv: Sequence[str] | None) -> str:
    arguments = list(sys.argv[1:] if argv is None else argv)
    return "python -m studies.study " + shlex.join(arguments) if arguments else "python -m studies.study"


if __name__ == "__main__":
    sys.exit(main())
