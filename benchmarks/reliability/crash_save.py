"""``save``: ``partial_lora.save`` killed with SIGKILL.

A fresh interpreter saves versions 1, 2, 3, ... of an adapter (every ``lora_B`` filled with
the version number) into one folder as fast as it can, and is killed after a random delay;
all kills go to the same folder, one after another. Clean: the folder loads and holds
exactly one version, the last one reported saved or the one being saved.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import partial_lora

from .common import Section, Timer, child_command, child_env, say

from fixtures import save_versions_until_killed, small_mlp  # noqa: E402  (the tests' builders)

child = save_versions_until_killed  # the child job: save version after version into a folder until killed


def _weights_match_config(folder: Path) -> bool:
    from partial_lora.files import file_sha256

    try:
        return json.loads((folder / "adapter_config.json").read_text())["weights_sha256"] == \
            file_sha256(folder / "adapter_model.safetensors")
    except (OSError, ValueError, KeyError):
        return False


def kill_phase(folder: Path, before: set[str]) -> str:
    names = {p.name for p in folder.iterdir()}
    new = names - before
    if any(n.startswith(".adapter_model.safetensors.") for n in new):
        return "writing the tensor file"
    if any(n.startswith(".adapter_config.json.") for n in new):
        return "writing the config"
    if ".adapter_model.previous.safetensors" in names:
        return "new tensors in place, config not yet" if not _weights_match_config(folder) \
            else "previous version kept, files agree"
    return "between two saves"


def run(args, work: Path) -> list[Section]:
    section = Section("save", "save crash points (SIGKILL during partial_lora.save)")
    folder = work / "saved-adapter"
    rng = random.Random(f"{args.seed}-save")
    reproduce = (f"python -m benchmarks.reliability --only save --seed {args.seed} --save-kills {args.save_kills} "
                 "--keep   (the kills share one folder; the moment depends on timing)")
    with Timer(section):
        for case in range(args.save_kills):
            before = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
            delay = rng.uniform(0.0, 0.25)
            process = subprocess.Popen(child_command("save", folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env=child_env(), text=True)
            first = process.stdout.readline()
            if not first.strip().isdigit():
                process.kill()
                _, err = process.communicate()
                section.record("child failed", f"save case {case}", [f"the child saved nothing: {first!r} "
                                                                     f"{err[-800:]}"], reproduce)
                continue
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            rest, _ = process.communicate()
            printed = [int(v) for v in [first, *rest.split()] if str(v).strip().isdigit()]
            phase = kill_phase(folder, before)
            problems = []
            try:
                model = partial_lora.load(small_mlp(), folder)
                values = {float(v) for layer in partial_lora.adapter_layers(model).values()
                          for v in layer.lora_B.unique()}
                if len(values) != 1:
                    problems.append(f"a mix of versions {sorted(values)}")
                elif int(values.pop()) not in (printed[-1], printed[-1] + 1):
                    problems.append(f"holds a version other than {printed[-1]} or {printed[-1] + 1}")
            except Exception as err:  # noqa: BLE001
                problems.append(f"load raised {type(err).__name__}: {err}")
            section.record(phase, f"save case {case} (seed {args.seed}, delay {delay:.3f} s, {phase}, last version "
                                  f"printed {printed[-1]})", problems, reproduce)
        strays = sorted(p.name for p in folder.iterdir()
                        if p.name not in ("adapter_model.safetensors", "adapter_config.json"))
        if strays:
            section.notes.append(f"after {args.save_kills} kills the adapter folder holds {len(strays)} other "
                                 f"file(s) (left by the last killed save): {strays[:4]}")
    say("save", f"{section.clean}/{section.tried} kills left one whole version")
    return [section]
