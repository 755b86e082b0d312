"""``mutations``: damaged and hostile adapter folders.

A saved adapter folder (tiny BERT, r=4 on query/key/value, keep ratio 0.4, classifier saved)
is mutated at random, each case with its own seeded RNG (``{seed}-mutation-{case}``): bytes
(truncate, flip bits, overwrite, insert, append, empty, delete), the safetensors header
(declared length, shapes, dtypes, offsets; checksums recomputed), crafted tensors (wrong
dtype or shape, NaN/inf, indices out of range, negative, duplicated, unsorted, missing or
unknown tensors; checksums recomputed), JSON fields of ``adapter_config.json`` (hostile
values, deleted or added keys, with or without recomputed checksums, a nested document too
deep to parse, a BOM), a pickle offered instead of safetensors (a real pickle that creates a
marker folder if it is ever unpickled), and file-system oddities (a folder or a device where
a file should be). Each load runs in a forked child (a crash or a hang is counted, not fatal).

Clean: ``partial_lora.load`` raises ``AdapterFileError`` (or ``ValueError``) with a message,
the base model's state_dict is unchanged and holds no adapter, and no pickle was run. A
mutation whose folder is byte-identical to the original, or that loads into exactly the
original adapter, is a *no-op*; a re-signed edit that loads into a *different* but
self-consistent adapter (e.g. float16 weights) is an *accepted edit*, listed.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import struct
import textwrap
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig

from .common import Section, Timer, folder_files, project_frames, run_isolated, say

from fixtures import randomize_adapters, tiny_bert  # noqa: E402  (the tests' builders)

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
LOAD_TIMEOUT = 30  # seconds; a load takes well under one
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


def run(args, work: Path) -> list[Section]:
    section = Section("mutations", "mutated adapter folders")
    seed = args.seed
    with Timer(section):
        original = work / "mutation-original"
        model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=0.4, modules_to_save=["classifier"]))
        randomize_adapters(model)
        partial_lora.save(model, original)
        original_files = folder_files(original)
        reference = adapter_signature(partial_lora.load(tiny_bert(), original))
        base = tiny_bert()
        cases = [int(args.case)] if args.case is not None else range(args.mutations)
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
                section.notes.append(f"mutation case {case}: the generator failed ({type(err).__name__}: {err}); "
                                     "skipped")
                shutil.rmtree(case_dir, ignore_errors=True)
                continue
            identical = folder.is_dir() and folder_files(folder) == original_files and \
                sorted(p.name for p in folder.iterdir()) == sorted(original_files)
            result = run_isolated(lambda: check_load(folder, base, reference), timeout=LOAD_TIMEOUT)
            marker = (case_dir / PICKLE_MARKER).exists()
            if args.verbose or args.case is not None:
                shown = {k: v for k, v in result.items() if k != "traceback"}
                say("mutations", f"{case}: {what}: {json.dumps(shown, default=str)[:300]}")
            problem = classify(section, case, family, what, result, marker, identical)
            if problem is None:
                if not args.keep:
                    shutil.rmtree(case_dir, ignore_errors=True)
                continue
            section.record(family, f"mutation case {case}: {what}", [problem],
                           f"python -m benchmarks.reliability --only mutations --seed {seed} --case {case} --keep")
            frames = re.findall(r'partial_lora/([\w/]+\.py)", line \d+, in (\w+)', result.get("traceback", ""))
            site = ":".join(frames[-1]) if frames else re.sub(r"\d+", "N", what.split(" = ")[0])
            section.signatures.append(f"{site} -> {result['outcome']} {result.get('type', '')}")
    say("mutations", f"{section.clean + section.accepted}/{section.tried} clean, {section.noop} no-ops")
    return [section]


def classify(section: Section, case: int, family: str, what: str, result: dict, marker: bool,
             identical: bool) -> str | None:
    """The problem of one case, or None when it was clean, a no-op or an accepted edit (then
    counted here)."""
    outcome = result["outcome"]
    if marker:
        return "a pickle was unpickled (the marker folder exists)"
    if outcome == "refused":
        if not result["untouched"]:
            return f"refused ({result['type']}) but the base model was changed"
        if len(result["message"]) < 20:
            return f"refused with a too-short message {result['message']!r}"
        section.tried += 1
        section.clean += 1
        section.count(family, True)
        return None
    if outcome == "accepted":
        if identical or not result["differences"]:
            section.noop += 1
            label = "no-op (byte-identical)" if identical else "no-op (loads into the same adapter)"
            if not identical and not result["config_same"]:
                label = "no-op (same adapter; descriptive config fields differ)"
                section.notes.append(f"mutation case {case}: {what}: loads into the same adapter, with a config "
                                     "that differs in fields a loaded adapter does not use")
            section.count(f"{family}: {label}", True)
            return None
        if "re-signed" in what:
            section.accepted += 1
            section.tried += 1
            section.count(f"{family}: accepted re-signed edit", True)
            section.notes.append(f"mutation case {case}: {what}: loaded into another, self-consistent adapter "
                                 f"({'; '.join(result['differences'])})")
            return None
        return f"loaded a changed adapter: {'; '.join(result['differences'])}"
    problem = f"{outcome}: {result.get('type', '')} {result.get('message', '')}".strip()
    if result.get("traceback"):
        problem += "\n" + textwrap.indent(result["traceback"].rstrip(), "      ")
    return problem
