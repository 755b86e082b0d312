"""Reliability counts: crash points, damaged and hostile files, bad command lines.

Tries many seeded cases in four categories and prints, for each, how many were tried, how
many were handled cleanly, and every case that was not (with what is needed to reproduce it):

1. ``train``: training crash points. A tiny adapted BERT (2 layers, hidden 32, Partial-LoRA
   r=4 on query/value, dropout 0.1, the classifier trained in full; 5 batches of 8 per epoch)
   trains in a fresh interpreter with a checkpoint after every step, and is killed with
   SIGKILL at a random moment: after a random step ``s`` (as reported by the checkpoint
   pointer), plus a random delay of up to ~1.5 step-and-checkpoint durations. The kill
   moment is classified post mortem from what the kill left on disk (a ``.tmp`` checkpoint
   folder, a renamed checkpoint the pointer does not name yet, an old checkpoint not yet
   pruned, a half-written pointer, or nothing: between two checkpoint writes). The run is
   then resumed in this process (``train(..., resume=True)``) and is clean when it resumes
   from the checkpoint the pointer named, runs to the end, and its final trainable tensors
   are bit-identical (``torch.equal``) to an uninterrupted run computed once.
2. ``save``: save crash points. A fresh interpreter saves versions 1, 2, 3, ... of an adapter
   (every ``lora_B`` filled with the version number) into one folder, as fast as it can, and
   is killed with SIGKILL after a random delay. Clean: the folder loads and holds exactly one
   version, the last one reported saved or the one being saved.
3. ``mutations``: damaged and hostile adapter folders. A saved adapter folder (tiny BERT,
   r=4 on query/key/value, keep ratio 0.4, classifier saved) is mutated at random: bytes
   (truncate, flip bits, overwrite, insert, append, empty, delete), the safetensors header
   (declared length, shapes, dtypes, offsets; checksums recomputed), crafted tensors (wrong
   dtype or shape, NaN/inf, indices out of range, negative, duplicated, unsorted, missing or
   unknown tensors; checksums recomputed), JSON fields of ``adapter_config.json`` (hostile
   values, deleted or added keys, with or without recomputed checksums, a nested document
   too deep to parse, a BOM), a pickle offered instead of safetensors (a real pickle that
   creates a marker folder if it is ever unpickled), and file-system oddities (a folder or a
   device where a file should be). Each load runs in a forked child (so a crash or a hang
   is counted, not fatal; address space capped at +4 GiB). Clean: ``partial_lora.load``
   raises ``AdapterFileError`` (or ``ValueError``) with a message, the base model's
   state_dict is unchanged (``torch.equal`` on every tensor) and holds no adapter, and no
   pickle was run. A mutation whose folder is byte-identical to the original, or that loads
   into exactly the original adapter (same tensors, indices, rank, scaling and dropout), is
   a *no-op*. A re-signed edit that loads into a *different* but self-consistent adapter
   (e.g. float16 weights) is counted as *accepted edit* and listed: the checksums were
   deliberately recomputed, so the file says what it holds.
4. ``cli``: bad command lines run through ``partial_lora.cli.main`` (``run`` on the packaged
   MiniLM with tiny settings). Clean: exit status 2, a message on stderr, no traceback, and
   no file created or changed in the case's folder (``--out`` included).

    python benchmarks/reliability.py                      # 30 / 30 / 300 / all, seed 0
    python benchmarks/reliability.py --train-kills 5 --save-kills 5 --mutations 50 --only train,mutations
    python benchmarks/reliability.py --only mutations --case 17 --keep   # one case, folder kept

Every process uses one intra-op thread (a tiny model trains much faster on one thread than on
two contended ones, and the reference and the killed runs must use the same thread count).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import pickle
import platform
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import partial_lora  # noqa: E402
from partial_lora import AdapterFileError, PartialLoraConfig  # noqa: E402

HERE = Path(__file__).resolve()


sys.path.insert(0, str(HERE.parent.parent / "tests"))
from fixtures import classification_data, news_rows, small_mlp, tiny_bert, write_csv  # noqa: E402  (the tests' own builders)

TRAIN_ADAPTER = PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"])
STEPS_PER_EPOCH = 5  # 40 examples, batches of 8


def adapted_bert(dropout: float = 0.1):
    return partial_lora.apply(tiny_bert(num_labels=2), replace(TRAIN_ADAPTER, dropout=dropout))


def train_batches():
    from partial_lora.training import TensorBatches

    return TensorBatches(classification_data(8 * STEPS_PER_EPOCH, seed=0), batch_size=8)


def train_config(output: Path, epochs: int, checkpoint_every: int | None):
    from partial_lora.training import TrainingConfig

    return TrainingConfig(learning_rate=1e-2, epochs=epochs, cpu=True, progress=False, output_dir=str(output),
                          checkpoint_every=checkpoint_every)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# -- child processes (this file, run with --child-train / --child-save) ---------------------
def child_train(output: str, epochs: int) -> None:
    from partial_lora.training import train

    train(adapted_bert(0.1), train_batches(), train_config(Path(output), epochs, 1))


def child_save(folder: str) -> None:
    model = partial_lora.apply(small_mlp(), PartialLoraConfig(r=4, alpha=8, target_modules=["0", "2"], keep_ratio=0.5))
    version = 0
    while True:
        version += 1
        with torch.no_grad():
            for layer in partial_lora.adapter_layers(model).values():
                layer.lora_B.fill_(float(version))
        partial_lora.save(model, folder)
        print(version, flush=True)


def child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


# -- results -----------------------------------------------------------------------------
@dataclass
class Section:
    name: str
    tried: int = 0
    clean: int = 0
    noop: int = 0  # no-ops (mutations), finished-before-kill (crash points): not counted as tried
    accepted: int = 0  # mutations: re-signed, self-consistent edits that load into another adapter
    failures: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)  # one per failure: failures alike share it
    notes: list[str] = field(default_factory=list)
    kinds: dict[str, list[int]] = field(default_factory=dict)  # kind -> [tried, clean]
    seconds: float = 0.0

    def count(self, kind: str, clean: bool) -> None:
        entry = self.kinds.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += int(clean)

    def print_kinds(self, title: str) -> None:
        width = max([len(title)] + [len(k) for k in self.kinds])
        print(f"  {title:<{width}}  tried  clean")
        for kind, (tried, clean) in sorted(self.kinds.items()):
            print(f"  {kind:<{width}}  {tried:5d}  {clean:5d}")


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


# == 1. training crash points ===============================================================
def read_pointer(root: Path) -> int | None:
    try:
        return int(json.loads((root / "latest").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kill_phase(root: Path) -> str:
    """Where the kill landed, from what it left under ``<output>/checkpoint``."""
    step = read_pointer(root)
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    finals = sorted(int(n.split("-")[1]) for n in names if n.startswith("checkpoint-") and not n.endswith(".tmp"))
    if any(n.endswith(".tmp") and n.startswith("checkpoint-") for n in names):
        return "checkpoint: writing its files (.tmp folder)"
    if any(n.startswith(".latest.") for n in names):
        return "checkpoint: writing the pointer"
    if step is not None and any(s > step for s in finals):
        return "checkpoint: renamed, pointer not yet updated"
    if len(finals) > 1:
        return "checkpoint: pruning the previous one"
    return "between checkpoint writes (in a step)"


def train_crash_points(count: int, epochs: int, seed: int, work: Path) -> Section:
    from partial_lora.training import latest_checkpoint, read_checkpoint, train

    section = Section("train")
    started = time.perf_counter()
    total = epochs * STEPS_PER_EPOCH
    reference = adapted_bert(0.1)
    train(reference, train_batches(), train_config(work / "reference", epochs, None))
    want = trainable_state(reference)
    print(f"[train] reference: {total} uninterrupted steps in {time.perf_counter() - started:.1f} s", flush=True)
    for case in range(count):
        rng = random.Random(f"{seed}-train-{case}")
        output = work / f"train-{case:03d}"
        root = output / "checkpoint"
        target = rng.randint(1, total - 2)
        fraction = rng.uniform(0.0, 1.5)
        output.mkdir(parents=True)
        log = output / "child.stderr"
        with log.open("wb") as stderr_file:
            process = subprocess.Popen([sys.executable, str(HERE), "--child-train", str(output), "--epochs",
                                        str(epochs)], env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr_file)
        seen: list[tuple[float, int]] = []
        deadline = time.monotonic() + 300
        finished = stalled = False
        try:
            while True:
                step = read_pointer(root)
                if step is not None and (not seen or seen[-1][1] != step):
                    seen.append((time.monotonic(), step))
                if step is not None and step >= target:
                    break
                if process.poll() is not None:
                    finished = True
                    break
                if time.monotonic() > deadline:
                    stalled = True
                    break
                time.sleep(0.002)
            if seen[-1:] and len(seen) >= 2 and seen[-1][1] > seen[0][1]:
                per_step = (seen[-1][0] - seen[0][0]) / (seen[-1][1] - seen[0][1])
            else:
                per_step = 0.1
            if not finished:
                time.sleep(fraction * per_step)
                finished = process.poll() is not None
        finally:
            process.kill()  # SIGKILL
            process.wait()
        reproduce = f"train case {case} (seed {seed}): killed after step >= {target} + {fraction:.2f} step"
        if stalled or (finished and process.returncode != 0):
            section.tried += 1
            why = "made no progress for 300 s" if stalled else f"failed on its own (rc {process.returncode})"
            section.failures.append(f"{reproduce}: the training child {why}: "
                                    f"{log.read_text(errors='replace')[-800:]}")
            continue
        if finished:
            section.noop += 1  # the run ended before the kill: not a crash point
            phase = "finished before the kill"
        else:
            phase = kill_phase(root)
        at_kill = read_pointer(root)
        section.tried += 0 if finished else 1
        try:
            resumed = adapted_bert(0.1)
            result = train(resumed, train_batches(), train_config(output, epochs, 1), resume=True)
            have = trainable_state(resumed)
            problems = []
            if result.resumed_from_step != at_kill:
                problems.append(f"resumed from step {result.resumed_from_step}, the pointer named {at_kill}")
            if result.steps != total:
                problems.append(f"ended at step {result.steps}, not {total}")
            differ = [n for n in want if n not in have or not torch.equal(want[n], have[n])]
            if differ:
                problems.append(f"{len(differ)} trainable tensors differ from the uninterrupted run, e.g. {differ[0]}")
            final = read_checkpoint(latest_checkpoint(root))
            if final.global_step != total:
                problems.append(f"the last checkpoint is step {final.global_step}")
            left = sorted(p.name for p in root.iterdir() if p.name not in (f"checkpoint-{total:08d}", "latest"))
            log.unlink()
            if left:
                section.notes.append(f"case {case} ({phase}): left behind after the resumed run finished: {left}")
        except BaseException as err:  # noqa: BLE001 - every failure is counted
            if isinstance(err, KeyboardInterrupt):
                raise
            problems = [f"resume raised {type(err).__name__}: {err}"]
        if finished:
            if problems:
                section.failures.append(f"{reproduce} (finished before the kill): {'; '.join(problems)}")
            continue
        section.count(phase, not problems)
        if problems:
            section.failures.append(f"{reproduce} [{phase}, pointer at step {at_kill}]: {'; '.join(problems)}")
        else:
            section.clean += 1
        print(f"[train] {case + 1}/{count}: killed at step {at_kill} ({phase}): "
              f"{'bit-identical after resume' if not problems else 'NOT CLEAN'}", flush=True)
        shutil.rmtree(output, ignore_errors=True)
    section.seconds = time.perf_counter() - started
    return section


# == 2. save crash points ===================================================================
def _weights_match_config(folder: Path) -> bool:
    from partial_lora.files import file_sha256

    try:
        return json.loads((folder / "adapter_config.json").read_text())["weights_sha256"] == \
            file_sha256(folder / "adapter_model.safetensors")
    except (OSError, ValueError, KeyError):
        return False


def save_crash_points(count: int, seed: int, work: Path) -> Section:
    section = Section("save")
    started = time.perf_counter()
    folder = work / "saved-adapter"
    rng = random.Random(f"{seed}-save")
    for case in range(count):
        before = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        delay = rng.uniform(0.0, 0.25)
        child = subprocess.Popen([sys.executable, str(HERE), "--child-save", str(folder)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=child_env(), text=True)
        first = child.stdout.readline()
        if not first.strip().isdigit():
            child.kill()
            _, err = child.communicate()
            section.tried += 1
            section.failures.append(f"save case {case}: the child saved nothing: {first!r} {err[-800:]}")
            continue
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        printed = [int(v) for v in [first, *rest.split()] if str(v).strip().isdigit()]
        section.tried += 1
        names = {p.name for p in folder.iterdir()}
        new = names - before
        if any(n.startswith(".adapter_model.safetensors.") for n in new):
            phase = "writing the tensor file"
        elif any(n.startswith(".adapter_config.json.") for n in new):
            phase = "writing the config"
        elif ".adapter_model.previous.safetensors" in names:
            phase = ("new tensors in place, config not yet" if not _weights_match_config(folder)
                     else "previous version kept, files agree")
        else:
            phase = "between two saves"
        problem = None
        try:
            model = partial_lora.load(small_mlp(), folder)
            values = {float(v) for layer in partial_lora.adapter_layers(model).values() for v in layer.lora_B.unique()}
            if len(values) != 1:
                problem = f"a mix of versions {sorted(values)}"
            elif int(values.pop()) not in (printed[-1], printed[-1] + 1):
                problem = f"holds a version other than {printed[-1]} or {printed[-1] + 1}"
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, KeyboardInterrupt):
                raise
            problem = f"load raised {type(err).__name__}: {err}"
        section.count(phase, problem is None)
        if problem:
            section.failures.append(f"save case {case} (seed {seed}, delay {delay:.3f} s, {phase}, last version "
                                    f"printed {printed[-1]}): {problem}")
        else:
            section.clean += 1
    strays = sorted(p.name for p in folder.iterdir() if p.name not in ("adapter_model.safetensors", "adapter_config.json"))
    if strays:
        section.notes.append(f"after {count} kills the adapter folder holds {len(strays)} other file(s) "
                             f"(left by killed saves; nothing removes them): {strays[:4]}{' ...' if len(strays) > 4 else ''}")
    section.seconds = time.perf_counter() - started
    return section


# == 3. mutated adapter folders =============================================================
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
HOSTILE_VALUES: list[Any] = [None, True, False, 0, -1, 1, 3, 2**64, -(2**63), 1e308, float("inf"), float("nan"), "",
                             "x" * 40, "../../etc/passwd", [], {}, [1, 2, 3], {"a": 1}, [[]], 0.5]
PICKLE_MARKER = "unpickled-marker"


class _RunsOnUnpickle:
    """Pickling this yields bytes that, if ever unpickled, create the marker folder."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def resign(folder: Path) -> None:
    """Recompute both checksums, as a deliberate (hostile) edit would."""
    from partial_lora.files import document_digest, file_sha256

    try:
        document = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(document, dict):
        return
    if (folder / WEIGHTS).is_file():
        document["weights_sha256"] = file_sha256(folder / WEIGHTS)
    document["document_sha256"] = document_digest(document)
    (folder / CONFIG).write_text(json.dumps(document))


def split_header(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def join_header(header: Any, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def mutate_bytes(folder: Path, rng: random.Random) -> str:
    target = rng.choice([WEIGHTS, CONFIG])
    path = folder / target
    data = bytearray(path.read_bytes())
    op = rng.choice(["truncate", "flip bit", "flip bytes", "overwrite span", "insert", "append", "empty", "delete",
                     "doubled"])
    if op == "truncate":
        cut = rng.randrange(len(data))
        path.write_bytes(bytes(data[:cut]))
        return f"bytes: {target} truncated to {cut} of {len(data)} bytes"
    if op == "flip bit":
        at, bit = rng.randrange(len(data)), rng.randrange(8)
        data[at] ^= 1 << bit
        path.write_bytes(bytes(data))
        return f"bytes: {target} bit {bit} of byte {at} flipped"
    if op == "flip bytes":
        spots = sorted(rng.sample(range(len(data)), rng.randint(2, 16)))
        for at in spots:
            data[at] ^= rng.randint(1, 255)
        path.write_bytes(bytes(data))
        return f"bytes: {target} {len(spots)} bytes changed at {spots[:4]}..."
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    if op == "overwrite span":
        at = rng.randrange(len(data))
        data[at:at + len(junk)] = junk
        path.write_bytes(bytes(data))
        return f"bytes: {target} {len(junk)} bytes overwritten at {at}"
    if op == "insert":
        at = rng.randrange(len(data))
        path.write_bytes(bytes(data[:at]) + junk + bytes(data[at:]))
        return f"bytes: {target} {len(junk)} bytes inserted at {at}"
    if op == "append":
        path.write_bytes(bytes(data) + junk)
        return f"bytes: {target} {len(junk)} junk bytes appended"
    if op == "empty":
        path.write_bytes(b"")
        return f"bytes: {target} emptied"
    if op == "doubled":
        path.write_bytes(bytes(data) * 2)
        return f"bytes: {target} written twice over"
    path.unlink()
    return f"bytes: {target} deleted"


def mutate_header(folder: Path, rng: random.Random) -> str:
    path = folder / WEIGHTS
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header, body = split_header(raw)
    keys = sorted(k for k in header if k != "__metadata__")
    key = rng.choice(keys)
    entry = header[key]
    op = rng.choice(["declared length", "huge shape", "offsets past the end", "offsets reversed", "offsets overlap",
                     "dtype", "shape of another size", "transposed shape", "header not json", "header a list",
                     "metadata not strings", "aliased tensor", "negative shape"])
    what = op
    if op == "declared length":
        value = rng.choice([0, 1, 7, length - 1, length + 1, len(raw), len(raw) + 8, 2**32, 2**63 - 1, 2**64 - 1])
        path.write_bytes(struct.pack("<Q", value) + raw[8:])
        what = f"declared header length {value} (real {length})"
    else:
        if op == "huge shape":
            entry["shape"] = [1 << 30, 1 << 30]
            entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][0] + (1 << 62)]
        elif op == "offsets past the end":
            entry["data_offsets"] = [entry["data_offsets"][0], len(body) + rng.choice([1, 8, 1 << 40])]
        elif op == "offsets reversed":
            entry["data_offsets"] = entry["data_offsets"][::-1]
        elif op == "offsets overlap":
            other = header[rng.choice(keys)]["data_offsets"]
            size = entry["data_offsets"][1] - entry["data_offsets"][0]
            entry["data_offsets"] = [other[0], other[0] + size]
        elif op == "dtype":
            entry["dtype"] = rng.choice(["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "XYZ"])
            what = f"dtype {entry['dtype']}"
        elif op == "shape of another size":
            entry["shape"] = [dim + rng.choice([-1, 1]) for dim in entry["shape"]]
        elif op == "transposed shape":
            entry["shape"] = entry["shape"][::-1]
        elif op == "negative shape":
            entry["shape"] = [-dim for dim in entry["shape"]]
        elif op == "metadata not strings":
            header["__metadata__"] = {"format": rng.choice([1, None, ["partial-lora"], {"x": 1}])}
        elif op == "aliased tensor":
            header[key.rsplit(".", 1)[0] + ".lora_extra"] = dict(entry)
        if op == "header not json":
            text = bytes(rng.randrange(256) for _ in range(length))
            path.write_bytes(raw[:8] + text + body)
        elif op == "header a list":
            path.write_bytes(join_header([header], body))
        else:
            path.write_bytes(join_header(header, body))
        what = f"{what} ({key})" if op not in ("header not json", "header a list", "metadata not strings") else what
    resign(folder)
    return f"header (re-signed): {what}"


def _first(tensors: dict, suffix: str, rng: random.Random) -> str:
    return rng.choice(sorted(k for k in tensors if k.endswith(suffix)))


def mutate_tensors(folder: Path, rng: random.Random) -> str:
    from safetensors.torch import load_file, save_file

    tensors = dict(load_file(str(folder / WEIGHTS)))
    kind = rng.choice(["weight dtype", "index dtype", "weight shape", "index shape", "index values", "weight values",
                       "missing tensor", "unknown tensor", "renamed tensor", "head", "key order"])
    if kind in ("weight dtype", "weight shape", "weight values"):
        key = _first(tensors, rng.choice(["lora_A", "lora_B"]), rng)
    elif kind in ("index dtype", "index shape", "index values"):
        key = _first(tensors, rng.choice(["lora_rows", "lora_columns"]), rng)
    else:
        key = rng.choice(sorted(tensors))
    value = tensors[key]
    what = kind
    if kind == "weight dtype":
        dtype = rng.choice([torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float16,
                            torch.bfloat16, torch.float64])
        tensors[key] = value.to(dtype)
        what = f"weight dtype {dtype}"
    elif kind == "index dtype":
        dtype = rng.choice([torch.float32, torch.float64, torch.int16, torch.int8, torch.uint8, torch.bool, torch.int64])
        tensors[key] = value.to(dtype)
        what = f"index dtype {dtype}"
    elif kind == "weight shape":
        op = rng.choice(["extra row", "row dropped", "transposed", "flattened", "extra dim", "empty", "scalar"])
        tensors[key] = {
            "extra row": lambda: torch.cat([value, value[:1]]),
            "row dropped": lambda: value[1:],
            "transposed": lambda: value.t().contiguous(),
            "flattened": lambda: value.reshape(-1),
            "extra dim": lambda: value[None],
            "empty": lambda: value[:0],
            "scalar": lambda: value[0, 0],
        }[op]()
        what = f"weight shape: {op}"
    elif kind == "index shape":
        op = rng.choice(["one dropped", "one added", "2-d", "empty"])
        tensors[key] = {
            "one dropped": lambda: value[:-1],
            "one added": lambda: torch.cat([value, value[-1:] + 1]),
            "2-d": lambda: value[None],
            "empty": lambda: value[:0],
        }[op]()
        what = f"index shape: {op}"
    elif kind == "index values":
        op = rng.choice(["out of range", "2**31-1", "negative", "duplicated", "swapped", "reversed", "all zero"])
        index = value.clone()
        if op == "out of range":
            index[-1] = 10_000
        elif op == "2**31-1":
            index[rng.randrange(len(index))] = 2**31 - 1
        elif op == "negative":
            index[0] = -rng.randint(1, 5)
        elif op == "duplicated":
            at = rng.randrange(1, len(index))
            index[at] = index[at - 1]
        elif op == "swapped":
            at = rng.randrange(1, len(index))
            index[at - 1], index[at] = index[at].clone(), index[at - 1].clone()
        elif op == "reversed":
            index = index.flip(0).contiguous()
        else:
            index.zero_()
        tensors[key] = index
        what = f"index values: {op}"
    elif kind == "weight values":
        op = rng.choice(["nan", "inf", "-inf"])
        changed = value.clone()
        changed.view(-1)[rng.randrange(changed.numel())] = float(op)
        tensors[key] = changed
        what = f"weight values: one {op}"
    elif kind == "missing tensor":
        del tensors[key]
    elif kind == "unknown tensor":
        extra = rng.choice(["adapters.bert.pooler.dense.lora_A", "adapters.bert.encoder.layer.0.output.dense.lora_B",
                            "modules_to_save.bert.pooler.dense.weight", "something_else"])
        tensors[extra] = torch.zeros(4, 4)
        what = f"unknown tensor {extra}"
    elif kind == "renamed tensor":
        tensors[key.replace("adapters.", "adapter.").replace("modules_to_save.", "module_to_save.")] = tensors.pop(key)
    elif kind == "head":
        head = rng.choice(["modules_to_save.classifier.weight", "modules_to_save.classifier.bias"])
        op = rng.choice(["another label count", "int dtype", "nan"])
        original = tensors[head]
        if op == "another label count":
            tensors[head] = torch.zeros(7, *original.shape[1:])
        elif op == "int dtype":
            tensors[head] = original.to(torch.int32)
        else:
            tensors[head] = original.clone().fill_(float("nan"))
        key, what = head, f"head: {op}"
    else:  # a re-save with other metadata: the same tensors
        what = "re-saved, other metadata"
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "partial-lora", "note": "edited"})
    resign(folder)
    return f"tensors (re-signed): {what} ({key})"


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


def mutate_json(folder: Path, rng: random.Random) -> str:
    from partial_lora.files import document_digest

    path = folder / CONFIG
    document = json.loads(path.read_text())
    op = rng.choices(["set", "delete", "add", "whole document", "too deep", "bom", "reformatted"],
                     weights=[10, 3, 2, 1, 1, 1, 2])[0]
    signed = rng.random() < 0.6
    if op == "too deep":
        depth = rng.choice([10_000, 100_000])
        path.write_text("[" * depth + "]" * depth)
        return f"json: a document nested {depth} deep"
    if op == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        return "json: UTF-8 byte-order mark prepended"
    if op == "reformatted":
        path.write_text(json.dumps(document, indent=rng.choice([None, 1, 4]), sort_keys=rng.random() < 0.5))
        return "json: reformatted (same content)"
    if op == "whole document":
        value = rng.choice([[], "partial-lora", 3, None, [document]])
        path.write_text(json.dumps(value))
        return f"json: the document replaced by {json.dumps(value)[:40]}"
    where = rng.choice(_paths(document))
    parent = document
    for part in where[:-1]:
        parent = parent[part]
    last = where[-1]
    if op == "set":
        value = rng.choice(HOSTILE_VALUES)
        parent[last] = value
        what = f"{'.'.join(map(str, where))} = {json.dumps(value)[:40]}"
    elif op == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
        what = f"{'.'.join(map(str, where))} deleted"
    else:
        holder = parent if isinstance(parent, dict) else document
        holder["unexpected_field"] = rng.choice(HOSTILE_VALUES)
        what = f"unexpected_field added next to {'.'.join(map(str, where))}"
    if signed:
        document["document_sha256"] = document_digest(document)
    path.write_text(json.dumps(document))
    return f"json ({'re-signed' if signed else 'checksum kept'}): {what}"


def mutate_pickle(folder: Path, rng: random.Random) -> str:
    marker = str(folder.parent / PICKLE_MARKER)
    payload = pickle.dumps({"state_dict": _RunsOnUnpickle(marker)}, protocol=2)
    name = "adapter_model" + rng.choice([".bin", ".pt", ".pth", ".ckpt", ".pkl"])
    op = rng.choice(["instead", "beside", "under the safetensors name"])
    if op == "instead":
        (folder / WEIGHTS).unlink()
        (folder / name).write_bytes(payload)
        return f"pickle: {name} instead of {WEIGHTS}"
    if op == "beside":
        (folder / name).write_bytes(payload)
        return f"pickle: {name} beside an intact {WEIGHTS}"
    (folder / WEIGHTS).write_bytes(payload)
    resign(folder)
    return f"pickle (re-signed): a pickle written as {WEIGHTS}"


def mutate_filesystem(folder: Path, rng: random.Random) -> str:
    op = rng.choice(["weights a folder", "config a folder", "weights /dev/zero", "config /dev/urandom",
                     "weights a fifo", "symlink loop", "folder a file", "empty folder"])
    if op in ("weights a folder", "config a folder"):
        target = folder / (WEIGHTS if op.startswith("weights") else CONFIG)
        target.unlink()
        target.mkdir()
    elif op == "weights /dev/zero":
        (folder / WEIGHTS).unlink()
        (folder / WEIGHTS).symlink_to("/dev/zero")
    elif op == "config /dev/urandom":
        (folder / CONFIG).unlink()
        (folder / CONFIG).symlink_to("/dev/urandom")
    elif op == "weights a fifo":
        (folder / WEIGHTS).unlink()
        os.mkfifo(folder / WEIGHTS)
    elif op == "symlink loop":
        (folder / WEIGHTS).unlink()
        (folder / WEIGHTS).symlink_to(folder / WEIGHTS)
    elif op == "folder a file":
        shutil.rmtree(folder)
        folder.write_bytes(b"not a folder")
    else:
        for path in folder.iterdir():
            path.unlink()
    return f"file system: {op}"


FAMILIES: list[tuple[str, float, Callable[[Path, random.Random], str]]] = [
    ("bytes", 0.30, mutate_bytes),
    ("header", 0.15, mutate_header),
    ("tensors", 0.25, mutate_tensors),
    ("json", 0.20, mutate_json),
    ("pickle", 0.05, mutate_pickle),
    ("file system", 0.05, mutate_filesystem),
]


def adapter_signature(model) -> tuple[dict, dict, dict]:
    from partial_lora.surgery import CONFIG_ATTRIBUTE

    layers = partial_lora.adapter_layers(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shape = {n: (l.r, l.scaling, float(getattr(l.lora_dropout, "p", 0.0)), l.is_conv) for n, l in layers.items()}
    config = getattr(model, CONFIG_ATTRIBUTE).to_dict()
    return state, shape, config


def signature_differences(a, b) -> list[str]:
    (state_a, shape_a, _), (state_b, shape_b, _) = a, b
    problems = []
    if state_a.keys() != state_b.keys():
        problems.append(f"state_dict keys differ ({sorted(set(state_a) ^ set(state_b))[:3]})")
    else:
        differ = [k for k in state_a if state_a[k].dtype != state_b[k].dtype or state_a[k].shape != state_b[k].shape
                  or not torch.equal(state_a[k], state_b[k])]
        if differ:
            problems.append(f"tensors differ: {differ[:3]}")
    if shape_a != shape_b:
        problems.append("rank/scaling/dropout differ: " + ", ".join(
            f"{n}: {shape_a.get(n)} vs {shape_b.get(n)}" for n in sorted(set(shape_a) | set(shape_b))
            if shape_a.get(n) != shape_b.get(n))[:200])
    return problems


def project_frames(text: str) -> str:
    """The frames of a traceback that lie in partial_lora, and its last line."""
    lines = text.rstrip().splitlines()
    kept = []
    for index, line in enumerate(lines):
        if line.lstrip().startswith("File ") and "partial_lora" in line:
            kept.append(line.strip())
            if index + 1 < len(lines):
                kept.append("  " + lines[index + 1].strip())
    return "\n".join(kept + [lines[-1]]) if lines else ""


def check_load(folder: Path, base: torch.nn.Module, reference) -> dict[str, Any]:
    """Load ``folder`` into ``base``; describe what happened (run in a forked child)."""
    before = {k: v.clone() for k, v in base.state_dict().items()}
    try:
        model = partial_lora.load(base, folder)
    except (AdapterFileError, ValueError) as err:
        after = base.state_dict()
        untouched = (before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
                     and not partial_lora.adapter_layers(base))
        return {"outcome": "refused", "type": type(err).__name__, "message": str(err)[:600], "untouched": untouched}
    except BaseException as err:  # noqa: BLE001
        return {"outcome": "other exception", "type": type(err).__name__, "message": str(err)[:600],
                "traceback": project_frames(traceback.format_exc())}
    differences = signature_differences(reference, adapter_signature(model))
    config_same = adapter_signature(model)[2] == reference[2]
    return {"outcome": "accepted", "differences": differences, "config_same": config_same}


def run_isolated(function: Callable[[], dict], timeout: float) -> dict[str, Any]:
    """``function()`` in a forked child (crashes and hangs are reported, not fatal)."""
    if not hasattr(os, "fork"):
        return function()
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read)
            import resource

            status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
            size = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:")), 0)
            if size:
                limit = size + (4 << 30)
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            result = function()
            data = json.dumps(result, default=str).encode()
            with os.fdopen(write, "wb") as stream:
                stream.write(data)
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + timeout
    import select

    with os.fdopen(read, "rb") as stream:
        while True:
            ready, _, _ = select.select([stream], [], [], 0.05)
            if ready:
                chunk = os.read(stream.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"outcome": "hang", "message": f"no answer after {timeout:.0f} s"}
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"outcome": "crash", "message": f"the loading process died of signal {os.WTERMSIG(status)}"}
    if not chunks:
        return {"outcome": "crash", "message": f"the loading process exited with {os.WEXITSTATUS(status)} and no answer"}
    return json.loads(b"".join(chunks))


def mutations(count: int, seed: int, work: Path, only_case: int | None, keep: bool, verbose: bool = False) -> Section:
    section = Section("mutations")
    started = time.perf_counter()
    original = work / "mutation-original"
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=0.4, modules_to_save=["classifier"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in partial_lora.adapter_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator, dtype=torch.float64) * 0.1)
    partial_lora.save(model, original)
    original_files = folder_files(original)
    reference = adapter_signature(partial_lora.load(tiny_bert(), original))
    base = tiny_bert()
    cases = [only_case] if only_case is not None else range(count)
    for case in cases:
        rng = random.Random(f"{seed}-mutation-{case}")
        family, _, mutate = rng.choices(FAMILIES, weights=[w for _, w, _ in FAMILIES])[0]
        case_dir = work / f"mutation-{case:04d}"
        folder = case_dir / "adapter"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        shutil.copytree(original, folder)
        try:
            what = mutate(folder, rng)
        except Exception as err:  # noqa: BLE001 - a mutation the generator cannot make: skip it
            section.notes.append(f"mutation case {case}: the generator failed ({type(err).__name__}: {err}); skipped")
            shutil.rmtree(case_dir, ignore_errors=True)
            continue
        identical = folder.is_dir() and folder_files(folder) == original_files and \
            sorted(p.name for p in folder.iterdir()) == sorted(original_files)
        result = run_isolated(lambda: check_load(folder, base, reference), timeout=120)
        marker = (case_dir / PICKLE_MARKER).exists()
        if verbose or only_case is not None:
            shown = {k: v for k, v in result.items() if k != "traceback"}
            print(f"[mutations] {case}: {what}: {json.dumps(shown, default=str)[:300]}", flush=True)
        reproduce = f"python benchmarks/reliability.py --only mutations --seed {seed} --case {case} --keep"
        outcome = result["outcome"]
        problem = None
        if marker:
            problem = "a pickle was unpickled (the marker folder exists)"
        elif outcome == "refused":
            if not result["untouched"]:
                problem = f"refused ({result['type']}) but the base model was changed"
            elif len(result["message"]) < 20:
                problem = f"refused with a too-short message {result['message']!r}"
        elif outcome == "accepted":
            if identical or not result["differences"]:
                section.noop += 1
                label = "no-op (byte-identical)" if identical else "no-op (loads into the same adapter)"
                if not identical and not result["config_same"]:
                    label = "no-op (same adapter; descriptive config fields differ)"
                    section.notes.append(f"mutation case {case}: {what}: loads into the same adapter, with a config "
                                         "that differs in fields a loaded adapter does not use")
                section.count(f"{family}: {label}", True)
                if not keep:
                    shutil.rmtree(case_dir, ignore_errors=True)
                continue
            if "re-signed" in what:
                section.accepted += 1
                section.tried += 1
                section.count(f"{family}: accepted re-signed edit", True)
                section.notes.append(f"mutation case {case}: {what}: loaded into another, self-consistent adapter "
                                     f"({'; '.join(result['differences'])})")
                if not keep:
                    shutil.rmtree(case_dir, ignore_errors=True)
                continue
            problem = f"loaded a changed adapter: {'; '.join(result['differences'])}"
        else:
            problem = f"{outcome}: {result.get('type', '')} {result.get('message', '')}".strip()
            if result.get("traceback"):
                problem += "\n" + textwrap.indent(result["traceback"].rstrip(), "      ")
        section.tried += 1
        section.count(family, problem is None)
        if problem is None:
            section.clean += 1
            if not keep:
                shutil.rmtree(case_dir, ignore_errors=True)
        else:
            section.failures.append(f"mutation case {case}: {what}: {problem}\n      reproduce: {reproduce}")
            frames = re.findall(r'partial_lora/([\w/]+\.py)", line \d+, in (\w+)', result.get("traceback", ""))
            site = ":".join(frames[-1]) if frames else re.sub(r"\d+", "N", what.split(" = ")[0])
            section.signatures.append(f"{site} -> {outcome} {result.get('type', '')}")
    section.seconds = time.perf_counter() - started
    return section


# == 4. bad command lines ===================================================================
TINY = ["--train-per-class", "6", "--test-per-class", "2", "--epochs", "1", "--shots", "4", "--max-length", "16",
        "--quiet"]


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
    write_csv(tmp / "small.csv", news_rows({"business": 12, "rare": 4}))
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


def earlier_run(out: Path) -> None:
    (out / "adapters" / "lora-seed0").mkdir(parents=True)
    (out / "results.json").write_text('{"results": [{"method": "lora"}]}\n')
    (out / "report.md").write_text("# an earlier run\n")
    (out / "ticket.json").write_text("{}\n")
    (out / "adapters" / "lora-seed0" / "adapter_model.safetensors").write_bytes(b"earlier adapter")


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        elif path.is_dir():
            found[str(path.relative_to(folder)) + "/"] = ("dir", 0)
    return found


def bad_cli_inputs(work: Path, only: str | None) -> list[Section]:
    """Three sections: the issue's list, more bad values, and bad input with --overwrite."""
    from partial_lora.cli import main

    sections = {name: Section(name) for name in ("cli", "cli-more", "cli-overwrite")}
    cache = work / "cli-cache"
    cache.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("PARTIAL_LORA_CACHE")
    os.environ["PARTIAL_LORA_CACHE"] = str(cache)
    try:
        probe = work / "cli-probe"
        probe.mkdir(parents=True, exist_ok=True)
        names = [(name, False) for name in bad_command_lines(probe)] + [(name, True) for name in OVERWRITE_CASES]
        for index, (base_name, overwrite) in enumerate(names):
            name = f"{base_name} (--overwrite an earlier run)" if overwrite else base_name
            if only is not None and name != only and base_name != only:
                continue
            section = sections["cli-overwrite" if overwrite else "cli" if base_name in ISSUE_CLI_CASES else "cli-more"]
            tmp = work / f"cli-{index:02d}"
            tmp.mkdir(parents=True)
            args = bad_command_lines(tmp)[base_name]
            argv = ["run", "--out", str(tmp / "out"), *TINY, *args]
            if overwrite:
                earlier_run(tmp / "out")
                argv.append("--overwrite")
            before = snapshot(tmp)
            out, err = io.StringIO(), io.StringIO()
            case_started = time.perf_counter()
            escaped = None
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as exit_:  # argparse's own errors
                    code = exit_.code
                except BaseException as caught:  # noqa: BLE001
                    if isinstance(caught, KeyboardInterrupt):
                        raise
                    code, escaped = None, f"{type(caught).__name__}: {caught}\n{project_frames(traceback.format_exc())}"
            after = snapshot(tmp)
            stderr = err.getvalue()
            problems = []
            if escaped:
                problems.append(f"an exception escaped main(): {escaped}")
            elif code != 2:
                problems.append(f"exit status {code!r}, not 2")
            lines = [line for line in stderr.splitlines() if line.strip()]
            message = next((line for line in lines if "error:" in line), lines[-1] if lines else "")
            if not message:
                problems.append("nothing on stderr")
            if "Traceback" in stderr:
                problems.append("a traceback on stderr")
            created = sorted(set(after) - set(before))
            changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
            removed = sorted(set(before) - set(after))
            files_created = [c for c in created if not c.endswith("/")]
            if files_created or changed or removed:
                problems.append(f"files created {files_created[:5]}, changed {changed[:5]}, removed {removed[:5]}")
            elif created:
                section.notes.append(f"cli '{name}': created the empty folder(s) {created} (no files)")
            section.tried += 1
            section.count(name, not problems)
            seconds = time.perf_counter() - case_started
            section.seconds += seconds
            print(f"[cli] {name}: exit {code}, {seconds:.1f} s: {message[:150]!r}"
                  f"{'' if not problems else '  NOT CLEAN'}", flush=True)
            if problems:
                command = "partial-lora " + " ".join(argv)
                section.failures.append(
                    f"cli '{name}': {'; '.join(problems)}\n      reproduce: python benchmarks/reliability.py --only cli "
                    f"--cli-case '{name}' --keep   (runs: {command})")
            else:
                section.clean += 1
    finally:
        if previous is None:
            os.environ.pop("PARTIAL_LORA_CACHE", None)
        else:
            os.environ["PARTIAL_LORA_CACHE"] = previous
    return [section for section in sections.values() if section.tried]


# == main ===================================================================================
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs (load {load}), "
            f"python {platform.python_version()}, torch {torch.__version__}, partial-lora {partial_lora.__version__}")


def print_failures(section: Section) -> None:
    """Every failure; of failures alike (same signature) the first in full, the others by name."""
    if len(section.signatures) != len(section.failures):
        for failure in section.failures:
            print(f"  NOT CLEAN: {failure}")
        return
    groups: dict[str, list[str]] = {}
    for signature, failure in zip(section.signatures, section.failures):
        groups.setdefault(signature, []).append(failure)
    for signature, failures in groups.items():
        print(f"  NOT CLEAN ({len(failures)} case(s) like this): {failures[0]}")
        if len(failures) > 1:
            print("      the others: " + ", ".join(f.split(":")[0] for f in failures[1:]))


def summary(sections: list[Section]) -> str:
    lines = ["| category | tried | handled cleanly | not clean | no-ops, not counted | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    labels = {"train": "training crash points (SIGKILL, then resume)",
              "save": "save crash points (SIGKILL during partial_lora.save)",
              "mutations": "mutated adapter folders", "cli": "bad CLI inputs (the issue's list)",
              "cli-more": "bad CLI inputs (more values)",
              "cli-overwrite": "bad CLI inputs with --overwrite of an earlier run"}
    for s in sections:
        clean = f"{s.clean + s.accepted}" + (f" ({s.accepted} accepted edits)" if s.accepted else "")
        lines.append(f"| {labels[s.name]} | {s.tried} | {clean} | {len(s.failures)} | {s.noop} | {s.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-kills", type=int, default=30, help="training runs killed with SIGKILL (default 30)")
    parser.add_argument("--train-epochs", type=int, default=8, help="epochs of 5 steps per killed run (default 8)")
    parser.add_argument("--save-kills", type=int, default=30, help="SIGKILLs during partial_lora.save (default 30)")
    parser.add_argument("--mutations", type=int, default=300, help="mutated adapter folders (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="train,save,mutations,cli", help="comma-separated categories to run")
    parser.add_argument("--case", type=int, help="with --only mutations: run this one mutation case")
    parser.add_argument("--cli-case", help="with --only cli: run this one named bad command line")
    parser.add_argument("--keep", action="store_true", help="keep the work folder, with every case's files")
    parser.add_argument("--work", help="work folder (default: a new temporary folder)")
    parser.add_argument("--verbose", action="store_true", help="print every mutation case and its outcome")
    parser.add_argument("--json", help="also write the counts to this JSON file")
    parser.add_argument("--child-train", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--child-save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_train:
        child_train(args.child_train, args.epochs)
        return 0
    if args.child_save:
        child_save(args.child_save)
        return 0
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - {"train", "save", "mutations", "cli"})
    if unknown:
        parser.error(f"unknown categories {unknown}")
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("partial_lora").setLevel(logging.WARNING)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="partial-lora-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"partial-lora reliability, seed {args.seed}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"work folder: {work}", flush=True)
    sections: list[Section] = []
    try:
        if "train" in chosen:
            sections.append(train_crash_points(args.train_kills, args.train_epochs, args.seed, work))
        if "save" in chosen:
            sections.append(save_crash_points(args.save_kills, args.seed, work))
        if "mutations" in chosen:
            sections.append(mutations(args.mutations, args.seed, work, args.case, args.keep, args.verbose))
        if "cli" in chosen:
            sections.extend(bad_cli_inputs(work, args.cli_case))
    finally:
        total = time.perf_counter() - started
        for section in sections:
            print(f"\n== {section.name}: {section.tried} tried, {section.clean + section.accepted} handled cleanly, "
                  f"{len(section.failures)} not clean, {section.noop} no-op ({section.seconds:.0f} s)")
            if not section.name.startswith("cli"):
                section.print_kinds("kind")
            print_failures(section)
            for note in section.notes:
                print(f"  note: {note}")
        print("\n" + summary(sections))
        print(f"\ntotal {total:.0f} s")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "seed": args.seed, "seconds": total, "machine": machine(),
                "sections": [s.__dict__ for s in sections]}, indent=1, default=str))
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"kept {work}")
    return 1 if any(s.failures for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
