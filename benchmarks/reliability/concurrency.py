"""``concurrency``: processes writing one folder at once while this process reads it.

**Writers and readers of one folder.** Each case (seeded: ``{seed}-concurrency-{case}``)
starts 2 or 3 writer processes that save 5 to 15 versions each of one adapter into one
folder (``partial_lora.save``, or ``partial_lora.export_peft`` into a PEFT folder), all
released at the same moment, while this process loads the folder in a loop
(``partial_lora.load`` and ``load_weights``, or ``import_peft``). Writer ``w`` saves versions
``1000 (w + 1) + i``, and every tensor of version ``v`` (``lora_A``, ``lora_B`` and the head
trained in full) holds ``v``, so a load that mixes two saves shows more than one value.
Clean: every save returns; every load gets one whole version (never an error, never a mix),
and never an older version of a writer after a newer one of it; the folder loads afterwards
and holds the last version of one writer.

**Two ``partial-lora run`` into one ``--out``** (once, unless ``--no-concurrent-runs``):
two children with seeds 0 and 1 started together. Clean: each exits 0, or 2 with one
message; afterwards ``--out`` holds one whole run (``results.json``, ``run.json``, the
adapters and checkpoints of one seed, every adapter folder readable), and a run that
reported success has its results there.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

import partial_lora
from partial_lora import PartialLoraConfig

from .common import (TINY, Section, Timer, child_command, child_env, cli_command, earlier_run, packaged_cache, say,
                     snapshot, work_folders)

from fixtures import small_mlp  # noqa: E402  (the tests' builder)

CONFIG = PartialLoraConfig(r=4, alpha=8, target_modules=["0", "2"], modules_to_save=["4"], keep_ratio=0.5)
MODES = ("save", "export")


def fill(model, version: float) -> None:
    """Every saved tensor of ``model`` set to ``version``."""
    with torch.no_grad():
        for layer in partial_lora.adapter_layers(model).values():
            layer.lora_A.fill_(version)
            layer.lora_B.fill_(version)
        model[4].weight.fill_(version)
        model[4].bias.fill_(version)


def write(model, folder: str, mode: str) -> None:
    if mode == "save":
        partial_lora.save(model, folder)
    else:
        partial_lora.export_peft(model, folder)


def child_writer(folder: str, first: str, count: str, mode: str) -> None:
    """Save versions ``first .. first + count - 1`` into ``folder``, once told to start."""
    model = partial_lora.apply(small_mlp(), CONFIG)
    print("ready", flush=True)
    sys.stdin.readline()
    for version in range(int(first), int(first) + int(count)):
        fill(model, float(version))
        write(model, folder, mode)
    print("saved", count, flush=True)


def versions_in(model, b_scale: float) -> set[float]:
    """The versions the tensors of a loaded model hold (one, unless two saves were mixed).
    A PEFT export folds Partial-LoRA's keep multiplier into ``lora_B``: ``b_scale`` undoes it."""
    values: set[float] = set()
    for layer in partial_lora.adapter_layers(model).values():
        values |= set(layer.lora_A.detach().unique().tolist())
        values |= {v / b_scale for v in layer.lora_B.detach().unique().tolist()}
    values |= set(model[4].weight.detach().unique().tolist()) | set(model[4].bias.detach().unique().tolist())
    return values


def peft_b_scale(work: Path) -> float:
    """What ``lora_B`` of version 1 holds after export and import (the keep multiplier)."""
    model = partial_lora.apply(small_mlp(), CONFIG)
    fill(model, 1.0)
    folder = work / "b-scale"
    partial_lora.export_peft(model, folder)
    layer = next(iter(partial_lora.adapter_layers(partial_lora.import_peft(small_mlp(), folder)).values()))
    return float(layer.lora_B.flatten()[0])


def read(folder: Path, mode: str, index: int, resumed) -> object:
    if mode == "export":
        return partial_lora.import_peft(small_mlp(), folder)
    if index % 3 == 2:  # into a model that already carries the adapters, as resuming does
        partial_lora.load_weights(resumed, folder)
        return resumed
    return partial_lora.load(small_mlp(), folder)


def writers_and_readers(section: Section, case: int, seed: int, work: Path, b_scale: float) -> None:
    rng = random.Random(f"{seed}-concurrency-{case}")
    writers, count, mode = rng.choice([2, 3]), rng.randint(5, 15), rng.choice(MODES)
    folder = work / f"case-{case:02d}"
    scale = b_scale if mode == "export" else 1.0
    model = partial_lora.apply(small_mlp(), CONFIG)
    fill(model, 0.0)
    write(model, str(folder), mode)  # version 0: readers always find an adapter
    firsts = [1000 * (w + 1) for w in range(writers)]
    children = [subprocess.Popen(child_command("writer", folder, first, count, mode), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), text=True)
                for first in firsts]
    problems: list[str] = []
    for process in children:
        if process.stdout.readline().strip() != "ready":
            problems.append(f"a writer did not start: {process.stderr.read()[-400:]}")
    for process in children:
        process.stdin.write("go\n")
        process.stdin.flush()
    resumed = partial_lora.apply(small_mlp(), CONFIG)
    loads, errors, mixes, backwards = 0, [], [], []
    last_seen = {first: -1.0 for first in firsts}
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in children) and time.monotonic() < deadline:
        try:
            values = versions_in(read(folder, mode, loads, resumed), scale)
        except Exception as err:  # noqa: BLE001 - every failure is counted
            errors.append(f"{type(err).__name__}: {err}"[:300])
            values = set()
        loads += 1
        if len(values) > 1:
            mixes.append(sorted(values)[:4])
        elif values and (version := values.pop()) != 0:
            first = next((f for f in firsts if f <= version < f + count), None)
            if first is None:
                mixes.append([version])  # a value no writer saved
            elif version < last_seen[first]:
                backwards.append((last_seen[first], version))
            else:
                last_seen[first] = version
    for process in children:
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if process.returncode != 0 or out.split()[-2:] != ["saved", str(count)]:
            problems.append(f"a writer failed (rc {process.returncode}): {err.strip()[-400:]}")
    if errors:
        problems.append(f"{len(errors)} of {loads} loads raised, e.g. {errors[0]}")
    if mixes:
        problems.append(f"{len(mixes)} of {loads} loads mixed versions, e.g. {mixes[0]}")
    if backwards:
        problems.append(f"{len(backwards)} loads saw an older version of a writer after a newer one, "
                        f"e.g. {backwards[0]}")
    try:
        final = versions_in(read(folder, mode, 0, resumed), scale)
        if final not in [{float(first + count - 1)} for first in firsts]:
            problems.append(f"afterwards the folder holds {sorted(final)[:4]}, not the last version of a writer")
    except Exception as err:  # noqa: BLE001
        problems.append(f"afterwards the folder does not load: {type(err).__name__}: {err}")
    strays = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    if strays:
        section.notes.append(f"case {case}: files left in the folder: {strays}")
    if loads < 3:
        section.notes.append(f"case {case}: only {loads} loads overlapped the writers")
    what = f"concurrency case {case} (seed {seed}): {writers} writers x {count} {mode}s, {loads} loads"
    section.record(f"{writers} writers, {mode}", what, problems,
                   f"python -m benchmarks.reliability --only concurrency --seed {seed} --case {case}   "
                   "(interleaving depends on timing)")
    say("concurrency", f"{what}: {'clean' if not problems else 'NOT CLEAN'}")


def two_runs_into_one_out(section: Section, work: Path, overwrite: bool) -> None:
    """Two ``partial-lora run --out X`` at once (seeds 0 and 1); with ``overwrite``, both pass
    ``--overwrite`` and ``X`` holds an earlier run."""
    out = work / ("shared-out-overwrite" if overwrite else "shared-out")
    argv = ["run", "--out", str(out), *TINY, "--methods", "lora,partial-lora", *(["--overwrite"] if overwrite else [])]
    if overwrite:
        earlier_run(out)
    before = snapshot(out)
    with packaged_cache(work):
        children = [subprocess.Popen(cli_command(*argv, "--seed", str(seed)), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env(), text=True) for seed in (0, 1)]
        outputs = [p.communicate(timeout=600) for p in children]
    name = f"two runs into one --out{' with --overwrite' if overwrite else ''}"
    problems: list[str] = []
    succeeded = []
    for seed, (process, (_, err)) in enumerate(zip(children, outputs)):
        lines = [line for line in err.splitlines() if line.strip()]
        if process.returncode == 0:
            succeeded.append(seed)
        elif process.returncode != 2 or "Traceback" in err:
            problems.append(f"run --seed {seed} exited {process.returncode}: {(lines or [''])[-1][:300]}")
        else:
            section.notes.append(f"{name}: run --seed {seed} was refused: {(lines or [''])[-1][:200]}")
    if succeeded or snapshot(out) != before:
        problems += whole_run_problems(out, succeeded)
    left = work_folders(out)
    if left:
        section.notes.append(f"{name}: left beside --out: {left}")
    case = "runs-overwrite" if overwrite else "runs"
    reproduce = (f"python -m benchmarks.reliability --only concurrency --case {case} --keep   (or two at once: "
                 f"partial-lora {' '.join(argv)} --seed 0 & ... --seed 1; the interleaving depends on timing)")
    section.record(name, f"{name} (exit {children[0].returncode} and {children[1].returncode})", problems, reproduce)
    say("concurrency", f"{name}: {'clean' if not problems else 'NOT CLEAN: ' + '; '.join(problems)}")


def whole_run_problems(out: Path, succeeded: list[int]) -> list[str]:
    """What keeps ``out`` from holding one whole run, of one of the seeds that reported success."""
    from partial_lora.adapter_files import read_adapter

    missing = [name for name in ("results.json", "run.json", "ticket.json", "report.md") if not (out / name).is_file()]
    problems = [f"--out lacks {missing}"] if missing else []
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as err:
        return problems + [f"results.json does not read ({type(err).__name__})"]
    seeds = {row["seed"] for row in results["results"]}
    try:
        recorded = json.loads((out / "run.json").read_text())["settings"]["seeds"]
    except (OSError, ValueError, KeyError):
        recorded = None
    if len(seeds) != 1 or (recorded is not None and recorded != sorted(seeds)):
        problems.append(f"results.json holds seeds {sorted(seeds)}, run.json says {recorded}")
    if succeeded and not seeds & set(succeeded):
        problems.append(f"runs --seed {succeeded} reported success, --out holds seed {sorted(seeds)}")
    lost = [s for s in succeeded if s not in seeds]
    if lost and len(succeeded) > 1:
        problems.append(f"run --seed {lost[0]} exited 0 ('wrote results.json') but its results are not in --out")
    for folder in ("adapters", "checkpoints"):
        names = sorted(p.name for p in (out / folder).iterdir()) if (out / folder).is_dir() else []
        foreign = [n for n in names if not any(n.endswith(f"seed{s}") for s in seeds)]
        if foreign or not names:
            problems.append(f"{folder}/ holds {names} (seed {sorted(seeds)} expected)")
    for row in results["results"]:
        folder = out / "adapters" / f"{row['method']}-seed{row['seed']}"
        if row["method"] == "partial-lora":
            try:
                read_adapter(folder)
            except Exception as err:  # noqa: BLE001
                problems.append(f"{folder.name} does not read: {type(err).__name__}: {err}"[:300])
        elif not (folder / "adapter_model.safetensors").is_file():
            problems.append(f"{folder.name}/adapter_model.safetensors is missing")
    return problems


def run(args, work: Path) -> list[Section]:
    section = Section("concurrency", "concurrent saves and loads of one folder; two runs into one --out")
    with Timer(section):
        b_scale = peft_b_scale(work)
        if args.case is None or args.case.isdigit():
            cases = [int(args.case)] if args.case is not None else range(args.concurrent_cases)
            for case in cases:
                writers_and_readers(section, case, args.seed, work, b_scale)
        for overwrite, case in ((False, "runs"), (True, "runs-overwrite")):
            if (args.case is None and not args.no_concurrent_runs) or args.case == case:
                two_runs_into_one_out(section, work, overwrite)
    return [section]
