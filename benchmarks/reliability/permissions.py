"""``permissions``: file modes, unwritable and full disks.

* **modes** (``permissions``): under umask 022 and 077, every file and folder each writer
  produces has a plain file's mode (``0o666 & ~umask``, folders ``0o777 & ~umask``) and no
  temporary file is left. Writers: ``partial_lora.save`` (new, and replacing),
  ``export_peft``, ``Ticket.save``, the training loop's checkpoints, and ``partial-lora run``
  (ticket, checkpoints, PEFT and Partial-LoRA adapters, plots, results), ``export`` and
  ``merge``.
* **unwritable places** (``permissions-errors``): ``partial-lora run --overwrite`` of an
  earlier run on a read-only file system (a tmpfs remounted read-only), into a read-only
  parent (0555, in a child without the capability to ignore modes), below a file, and beside
  a file that takes the work folder's name; and on a full disk (tmpfs of 64 KiB to 1.5 MiB, so
  the run fails at different points). Clean: exit 2 with one message, no traceback, the
  earlier run byte-identical. Also ``partial_lora.save`` / ``export_peft`` replacing an adapter
  and training writing a checkpoint on a full disk: an ``OSError``, and what was there still
  loads. Cases that need ``mount`` are skipped (and said so) where it is not allowed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import torch

import partial_lora
from partial_lora import PartialLoraConfig

from .common import (TINY, CliResult, Section, Timer, differences, earlier_run, packaged_cache, run_cli,
                     run_isolated, say, snapshot)

from fixtures import classification_data, small_mlp, tiny_bert  # noqa: E402  (the tests' builders)

UMASKS = (0o022, 0o077)
MLP = PartialLoraConfig(r=4, alpha=8, target_modules=["0", "2"], modules_to_save=["4"], keep_ratio=0.5)
RUN = [*TINY, "--methods", "lora,partial-lora"]


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def wrong_modes(root: Path, mask: int) -> list[str]:
    """Paths under ``root`` (itself included) without a plain mode, and temporary files left."""
    wrong = []
    for path in [root, *sorted(root.rglob("*"))]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        if mode != want:
            wrong.append(f"{path.relative_to(root.parent)} {oct(mode)} (not {oct(want)})")
        if path.name.endswith(".tmp"):
            wrong.append(f"{path.relative_to(root.parent)} left behind")
    return wrong


# -- the writers: each writes into a new folder ``out`` ------------------------------------
def adapted_mlp():
    return partial_lora.apply(small_mlp(), MLP)


def write_save(out: Path, cli_runs: dict) -> None:
    partial_lora.save(adapted_mlp(), out)


def write_save_twice(out: Path, cli_runs: dict) -> None:
    partial_lora.save(adapted_mlp(), out)
    partial_lora.save(adapted_mlp(), out)


def write_export(out: Path, cli_runs: dict) -> None:
    partial_lora.export_peft(adapted_mlp(), out)


def write_ticket(out: Path, cli_runs: dict) -> None:
    ticket = partial_lora.find_ticket(tiny_bert(), None, target_modules=["query", "value"], method="uniform",
                                      ratio=0.5, progress=False)
    ticket.save(out / "ticket.json")


def write_checkpoints(out: Path, cli_runs: dict) -> None:
    from partial_lora.training import TensorBatches, TrainingConfig, train

    model = partial_lora.apply(tiny_bert(num_labels=2), PartialLoraConfig(r=4, target_modules=["query"]))
    train(model, TensorBatches(classification_data(16, seed=0), batch_size=8),
          TrainingConfig(learning_rate=1e-2, epochs=1, cpu=True, progress=False, output_dir=str(out),
                         checkpoint_every=1))


def write_run(out: Path, cli_runs: dict) -> None:
    result = run_cli(["run", "--out", str(out), *RUN])
    if result.code != 0:
        raise RuntimeError(f"partial-lora run exit {result.code}: {result.message() or result.escaped}")
    cli_runs["run"] = out


def cli_writer(command: str) -> Callable[[Path, dict], None]:
    def write(out: Path, cli_runs: dict) -> None:
        adapter = cli_runs["run"] / "adapters" / "partial-lora-seed0"
        result = run_cli([command, str(adapter), "--out", str(out)])
        if result.code != 0:
            raise RuntimeError(f"partial-lora {command} exit {result.code}: {result.message() or result.escaped}")
    return write


WRITERS: dict[str, Callable[[Path, dict], None]] = {
    "partial_lora.save": write_save,
    "partial_lora.save, replacing": write_save_twice,
    "partial_lora.export_peft": write_export,
    "Ticket.save": write_ticket,
    "training checkpoints": write_checkpoints,
    "partial-lora run": write_run,
    "partial-lora export": cli_writer("export"),
    "partial-lora merge": cli_writer("merge"),
}


def modes(section: Section, work: Path, only: str | None) -> None:
    for mask in UMASKS:
        cli_runs: dict[str, Path] = {}
        for index, (name, write) in enumerate(WRITERS.items()):
            # export and merge read the adapter the run wrote: asking for them runs it too
            needed = only is None or name == only or (name == "partial-lora run" and only.startswith("partial-lora"))
            if not needed:
                continue
            out = work / f"umask-{mask:03o}" / f"{index}-{name.replace(' ', '-').replace(',', '')}"
            out.parent.mkdir(parents=True, exist_ok=True)
            with umask(mask):
                try:
                    write(out, cli_runs)
                    problems = wrong_modes(out, mask)
                    count = sum(1 for _ in out.rglob("*")) + 1
                except Exception as err:  # noqa: BLE001 - every failure is counted
                    problems, count = [f"the writer failed: {type(err).__name__}: {err}"[:300]], 0
            section.record(name, f"modes: {name} under umask {mask:03o} ({count} paths)",
                           problems[:1] + ([f"and {len(problems) - 1} more"] if len(problems) > 1 else []),
                           f"python -m benchmarks.reliability --only permissions --case '{name}' --keep")
            say("permissions", f"umask {mask:03o}: {name}: {count} paths, "
                               f"{'plain modes' if not problems else 'NOT CLEAN: ' + problems[0]}")


# -- unwritable and full places ---------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` mounted at ``path`` (yields False where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


def refused_run(out: Path, *extra: str, words: tuple[str, ...] = (), unprivileged: bool = False) -> list[str]:
    """``partial-lora run --overwrite`` into ``out`` (an earlier run, unless absent): exit 2,
    one message naming ``words``, ``out`` byte-identical."""
    before = snapshot(out)
    argv = ["run", "--out", str(out), *RUN, "--overwrite", *extra]
    if unprivileged:
        outcome = run_isolated(lambda: without_mode_override(argv), timeout=300)
        if "code" not in outcome:
            return [f"main() {outcome['outcome']}: {outcome['message']}"]
        result = CliResult(outcome["code"], "", outcome["stderr"], outcome["escaped"])
    else:
        result = run_cli(argv)
    problems = result.refusal_problems(words)
    if sum("error:" in line for line in result.stderr.splitlines()) > 1:
        problems.append("more than one message")
    return problems + differences(before, snapshot(out))


def without_mode_override(argv: list[str]) -> dict:
    """``run_cli(argv)`` as root without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER:
    file modes then apply to this (forked) process as to any user."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return {"outcome": "crash", "message": "capget failed"}
    keep = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        return {"outcome": "crash", "message": f"capset failed: {os.strerror(ctypes.get_errno())}"}
    result = run_cli(argv)
    return {"code": result.code, "stderr": result.stderr[-4000:], "escaped": result.escaped}


def read_only_file_system(work: Path) -> list[str] | None:
    mount = work / "read-only"
    with tmpfs(mount, "4M") as mounted:
        if not mounted:
            return None
        earlier_run(mount / "out")
        remount(mount, "ro")
        return refused_run(mount / "out", words=("read-only",))


def read_only_parent(work: Path) -> list[str]:
    parent = work / "read-only-parent"
    earlier_run(parent / "out")
    parent.chmod(0o555)
    try:
        return refused_run(parent / "out", words=("permission denied",), unprivileged=True)
    finally:
        parent.chmod(0o755)


def below_a_file(work: Path) -> list[str]:
    (work / "a-file").write_text("not a folder")
    return refused_run(work / "a-file" / "out", words=("a file stands where a folder is expected",))


def work_name_taken(work: Path) -> list[str]:
    folder = work / "work-name-taken"
    earlier_run(folder / "out")
    (folder / ".out.partial-lora-work").write_text("a file of mine")
    return refused_run(folder / "out", words=(".out.partial-lora-work",))


def full_disk_run(size: str) -> Callable[[Path], list[str] | None]:
    def case(work: Path) -> list[str] | None:
        mount = work / f"full-{size}"
        with tmpfs(mount, size) as mounted:
            if not mounted:
                return None
            earlier_run(mount / "out")
            before = snapshot(mount / "out")
            result = run_cli(["run", "--out", str(mount / "out"), *RUN, "--overwrite"])
            if result.code == 0:  # it fitted: a whole new run is clean too
                return [] if (mount / "out" / "results.json").is_file() else ["exit 0 without results.json"]
            problems = result.refusal_problems(("no space left",))
            if "damaged" in result.message():
                problems.append(f"the message blames a damaged file: {result.message()[:200]!r}")
            if sum("error:" in line for line in result.stderr.splitlines()) > 1:
                problems.append("more than one message")
            say("permissions", f"full disk ({size}): {result.message()[:200]}")
            return problems + differences(before, snapshot(mount / "out"))
    return case


def fill_up(mount: Path) -> None:
    """Write a filler file until the file system is full."""
    with open(mount / "filler", "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise


def full_disk_replace(kind: str) -> Callable[[Path], list[str] | None]:
    """``save`` or ``export_peft`` replacing an adapter on a full disk: OSError, the old one loads."""
    def case(work: Path) -> list[str] | None:
        mount = work / f"full-{kind}"
        with tmpfs(mount, "1M") as mounted:
            if not mounted:
                return None
            folder = mount / "adapter"
            model = adapted_mlp()
            write = partial_lora.save if kind == "save" else partial_lora.export_peft
            read = partial_lora.load if kind == "save" else partial_lora.import_peft
            write(model, folder)
            fill_up(mount)
            with torch.no_grad():
                for layer in partial_lora.adapter_layers(model).values():
                    layer.lora_B.fill_(1.0)
            try:
                write(model, folder)
                return ["the write succeeded on a full disk"]
            except OSError as err:
                problems = [] if err.errno == errno.ENOSPC else [f"OSError {err.errno} ({err}), not ENOSPC"]
            except Exception as err:  # noqa: BLE001
                return [f"raised {type(err).__name__}: {err}, not OSError"]
            (mount / "filler").unlink()
            try:
                loaded = read(small_mlp(), folder)
                if any(bool(layer.lora_B.any()) for layer in partial_lora.adapter_layers(loaded).values()):
                    problems.append("the folder holds the new version (or a mix), not the old one")
            except Exception as err:  # noqa: BLE001
                problems.append(f"the old adapter no longer loads: {type(err).__name__}: {err}"[:300])
            left = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
            if left:
                problems.append(f"temporary files left: {left}")
            return problems
    return case


def full_disk_checkpoint(work: Path) -> list[str] | None:
    """Training whose disk fills up after step 4 (a step callback fills it): writing the next
    checkpoint fails with an OSError, and the last whole checkpoint still reads."""
    from partial_lora.training import TensorBatches, TrainingConfig, latest_checkpoint, read_checkpoint, train

    mount = work / "full-checkpoint"
    with tmpfs(mount, "1M") as mounted:
        if not mounted:
            return None

        def fill_after_step_4(model, step: int) -> None:
            if step == 4:
                fill_up(mount)

        model = partial_lora.apply(tiny_bert(num_labels=2), PartialLoraConfig(r=4, target_modules=["query"]))
        config = TrainingConfig(learning_rate=1e-2, epochs=4, cpu=True, progress=False, output_dir=str(mount),
                                checkpoint_every=1)
        try:
            train(model, TensorBatches(classification_data(16, seed=0), batch_size=8), config,
                  callbacks=[fill_after_step_4])
            return ["training wrote its checkpoints on a full disk"]
        except OSError as err:
            problems = [] if err.errno == errno.ENOSPC else [f"OSError {err.errno} ({err}), not ENOSPC"]
        except Exception as err:  # noqa: BLE001
            return [f"raised {type(err).__name__}: {err}, not OSError"[:300]]
        try:
            step = read_checkpoint(latest_checkpoint(mount / "checkpoint")).global_step
            if step not in (3, 4):
                problems.append(f"the last whole checkpoint is step {step}, not 3 or 4")
        except Exception as err:  # noqa: BLE001
            problems.append(f"the last checkpoint does not read: {type(err).__name__}: {err}"[:300])
        return problems


ERRORS: dict[str, Callable[[Path], list[str] | None]] = {
    "read-only file system": read_only_file_system,
    "read-only --out parent (0555)": read_only_parent,
    "--out below a file": below_a_file,
    "a file named like the work folder": work_name_taken,
    "full disk: run in 64 KiB": full_disk_run("64k"),
    "full disk: run in 512 KiB": full_disk_run("512k"),
    "full disk: run in 1.5 MiB": full_disk_run("1536k"),
    "full disk: save replacing an adapter": full_disk_replace("save"),
    "full disk: export_peft replacing an export": full_disk_replace("export"),
    "full disk: a training checkpoint": full_disk_checkpoint,
}


def errors(section: Section, work: Path, only: str | None) -> None:
    for index, (name, case) in enumerate(ERRORS.items()):
        if only is not None and only != name:
            continue
        folder = work / f"error-{index:02d}"
        folder.mkdir(parents=True)
        try:
            problems = case(folder)
        except Exception as err:  # noqa: BLE001 - every failure is counted
            problems = [f"the case failed: {type(err).__name__}: {err}"[:300]]
        if problems is None:
            section.notes.append(f"'{name}' skipped: mount is not allowed here")
            continue
        section.record(name.split(":")[0], f"'{name}'", problems,
                       f"python -m benchmarks.reliability --only permissions --case '{name}' --keep")
        say("permissions", f"{name}: {'clean' if not problems else 'NOT CLEAN: ' + '; '.join(problems)}"[:300])


def run(args, work: Path) -> list[Section]:
    plain = Section("permissions", "file modes under umask 022 and 077")
    unwritable = Section("permissions-errors", "read-only, blocked and full disks")
    with packaged_cache(work):
        if args.case is None or args.case in WRITERS:
            with Timer(plain):
                modes(plain, work, args.case)
        if args.case is None or args.case in ERRORS:
            with Timer(unwritable):
                errors(unwritable, work, args.case)
    return [s for s in (plain, unwritable) if s.tried or s.notes]
