"""``train``: training killed with SIGKILL at a random moment, then resumed.

A tiny adapted BERT (2 layers, hidden 32, Partial-LoRA r=4 on query/value, dropout 0.1, the
classifier trained in full; 5 batches of 8 per epoch) trains in a fresh interpreter with a
checkpoint after every step, and is killed after a random step ``s`` (as the checkpoint
pointer reports it) plus a random delay of up to ~1.5 step-and-checkpoint durations. The
moment is classified post mortem from what the kill left on disk. The run is then resumed in
this process (``train(..., resume=True)``); clean when it resumes from the checkpoint the
pointer named, runs to the end, and its trainable tensors are bit-identical (``torch.equal``)
to an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch

import partial_lora
from partial_lora import PartialLoraConfig

from .common import Section, Timer, child_command, child_env, say

from fixtures import classification_data, tiny_bert  # noqa: E402  (the tests' builders)

ADAPTER = PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"])
STEPS_PER_EPOCH = 5  # 40 examples, batches of 8


def adapted_bert():
    return partial_lora.apply(tiny_bert(num_labels=2), replace(ADAPTER, dropout=0.1))


def batches():
    from partial_lora.training import TensorBatches

    return TensorBatches(classification_data(8 * STEPS_PER_EPOCH, seed=0), batch_size=8)


def config(output: Path, epochs: int, checkpoint_every: int | None):
    from partial_lora.training import TrainingConfig

    return TrainingConfig(learning_rate=1e-2, epochs=epochs, cpu=True, progress=False, output_dir=str(output),
                          checkpoint_every=checkpoint_every)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def child(output: str, epochs: str) -> None:
    """The run that is killed: a checkpoint after every step."""
    from partial_lora.training import train

    train(adapted_bert(), batches(), config(Path(output), int(epochs), 1))


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


def kill_after(process: subprocess.Popen, root: Path, target: int, fraction: float) -> tuple[bool, bool]:
    """Wait until the pointer reaches ``target``, then ``fraction`` of a step more; SIGKILL.
    Returns (finished before the kill, stalled)."""
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
        if len(seen) >= 2 and seen[-1][1] > seen[0][1]:
            per_step = (seen[-1][0] - seen[0][0]) / (seen[-1][1] - seen[0][1])
        else:
            per_step = 0.1
        if not finished:
            time.sleep(fraction * per_step)
            finished = process.poll() is not None
    finally:
        process.kill()  # SIGKILL
        process.wait()
    return finished, stalled


def run(args, work: Path) -> list[Section]:
    from partial_lora.training import latest_checkpoint, read_checkpoint, train

    section = Section("train", "training crash points (SIGKILL, then resume)")
    epochs, seed = args.train_epochs, args.seed
    total = epochs * STEPS_PER_EPOCH
    with Timer(section):
        reference = adapted_bert()
        train(reference, batches(), config(work / "reference", epochs, None))
        want = trainable_state(reference)
        say("train", f"reference: {total} uninterrupted steps")
        cases = [int(args.case)] if args.case is not None else range(args.train_kills)
        for case in cases:
            rng = random.Random(f"{seed}-train-{case}")
            output = work / f"train-{case:03d}"
            root = output / "checkpoint"
            target = rng.randint(1, total - 2)
            fraction = rng.uniform(0.0, 1.5)
            output.mkdir(parents=True)
            log = output / "child.stderr"
            with log.open("wb") as stderr_file:
                process = subprocess.Popen(child_command("train", output, epochs), env=child_env(),
                                           stdout=subprocess.DEVNULL, stderr=stderr_file)
            finished, stalled = kill_after(process, root, target, fraction)
            what = f"train case {case} (seed {seed}): killed after step >= {target} + {fraction:.2f} step"
            reproduce = (f"python -m benchmarks.reliability --only train --seed {seed} --train-epochs {epochs} "
                         f"--case {case} --keep   (the moment depends on timing)")
            if stalled or (finished and process.returncode != 0):
                why = "made no progress for 300 s" if stalled else f"failed on its own (rc {process.returncode})"
                section.record("child failed", what, [f"the training child {why}: "
                                                      f"{log.read_text(errors='replace')[-800:]}"], reproduce)
                continue
            phase = "finished before the kill" if finished else kill_phase(root)
            at_kill = read_pointer(root)
            try:
                resumed = adapted_bert()
                result = train(resumed, batches(), config(output, epochs, 1), resume=True)
                have = trainable_state(resumed)
                problems = []
                if result.resumed_from_step != at_kill:
                    problems.append(f"resumed from step {result.resumed_from_step}, the pointer named {at_kill}")
                if result.steps != total:
                    problems.append(f"ended at step {result.steps}, not {total}")
                differ = [n for n in want if n not in have or not torch.equal(want[n], have[n])]
                if differ:
                    problems.append(f"{len(differ)} trainable tensors differ from the uninterrupted run, "
                                    f"e.g. {differ[0]}")
                final = read_checkpoint(latest_checkpoint(root))
                if final.global_step != total:
                    problems.append(f"the last checkpoint is step {final.global_step}")
                left = sorted(p.name for p in root.iterdir() if p.name not in (f"checkpoint-{total:08d}", "latest"))
                log.unlink()
                if left:
                    section.notes.append(f"case {case} ({phase}): left behind after the resumed run finished: {left}")
            except Exception as err:  # noqa: BLE001 - every failure is counted
                problems = [f"resume raised {type(err).__name__}: {err}"]
            if finished:
                section.noop += 1  # the run ended before the kill: not a crash point
                if problems:
                    section.failures.append(f"{what} (finished before the kill): {'; '.join(problems)}")
                continue
            section.record(phase, f"{what} [{phase}, pointer at step {at_kill}]", problems, reproduce)
            say("train", f"{case + 1}/{len(cases)}: killed at step {at_kill} ({phase}): "
                         f"{'bit-identical after resume' if not problems else 'NOT CLEAN'}")
            if not args.keep:
                shutil.rmtree(output, ignore_errors=True)
    return [section]
