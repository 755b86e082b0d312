"""Two writers, one folder: saves take turns, and a reader sees one whole adapter, never an error.

Child processes save versions of one adapter into one folder; every tensor of version ``v``
(``lora_A``, ``lora_B`` and the head trained in full) is filled with ``v``, so a folder that
mixes two saves, or a load that reads the config of one and the tensors of another, shows
as more than one value. Loops are bounded: each test takes a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import partial_lora
from partial_lora import PartialLoraConfig
from partial_lora import files as files_module
from partial_lora.adapter_files import read_config
from partial_lora.files import folder_lock

from conftest import small_mlp

CONFIG = PartialLoraConfig(r=4, alpha=8, target_modules=["0", "2"], modules_to_save=["4"], keep_ratio=0.5)

WRITER = textwrap.dedent(
    """
    import sys, torch
    import partial_lora
    from partial_lora import PartialLoraConfig
    from fixtures import small_mlp
    folder, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = PartialLoraConfig(r=4, alpha=8, target_modules=["0", "2"], modules_to_save=["4"], keep_ratio=0.5)
    model = partial_lora.apply(small_mlp(), config)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for version in range(first, first + count):
        with torch.no_grad():
            for layer in partial_lora.adapter_layers(model).values():
                layer.lora_A.fill_(float(version))
                layer.lora_B.fill_(float(version))
            model[4].weight.fill_(float(version))
            model[4].bias.fill_(float(version))
        partial_lora.save(model, folder)
    print("saved", count, flush=True)
    """
)


def start_writers(folder, ranges):
    """One writer process per ``(first version, count)``, started together once all are ready."""
    tests = os.path.dirname(__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, *sys.path]))
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(first), str(count)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
                for first, count in ranges]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    return children


def finish(children, counts):
    for child, count in zip(children, counts):
        output, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        assert output.split() == ["saved", str(count)]  # every save returned


def version_of(model) -> float:
    """The one value every saved tensor holds; fails on a mix of two versions."""
    tensors = [t for layer in partial_lora.adapter_layers(model).values() for t in (layer.lora_A, layer.lora_B)]
    tensors += [model[4].weight, model[4].bias]
    values = set(torch.cat([t.detach().flatten() for t in tensors]).unique().tolist())
    assert len(values) == 1, f"a mix of versions: {sorted(values)}"
    return values.pop()


def test_two_processes_saving_into_one_folder_take_turns(tmp_path):
    folder = tmp_path / "adapter"
    partial_lora.save(partial_lora.apply(small_mlp(), CONFIG), folder)  # a previous version to replace
    count = 20
    children = start_writers(folder, [(1000, count), (2000, count)])
    finish(children, [count, count])
    version = version_of(partial_lora.load(small_mlp(), folder))
    assert version in (1000 + count - 1, 2000 + count - 1)  # the last save of one of the writers, whole
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_a_reader_during_saves_sees_whole_versions_in_order(tmp_path):
    folder = tmp_path / "adapter"
    model = partial_lora.apply(small_mlp(), CONFIG)
    partial_lora.save(model, folder)  # version 0: zeros in lora_B, the base head in "4"
    count = 60
    (writer,) = start_writers(folder, [(1, count)])
    seen, loads, deadline = [], 0, time.monotonic() + 60
    resumed = partial_lora.apply(small_mlp(), CONFIG)
    while writer.poll() is None and time.monotonic() < deadline:
        if loads % 3 == 2:
            read_config(folder)
            partial_lora.load_weights(resumed, folder)  # the model that already has the adapters
            loaded = resumed
        else:
            loaded = partial_lora.load(small_mlp(), folder)
        loads += 1
        if any(bool(layer.lora_B.any()) for layer in partial_lora.adapter_layers(loaded).values()):
            seen.append(version_of(loaded))
    finish([writer], [count])
    assert loads > 5, "the reader did not overlap the writer"
    assert seen == sorted(seen), "a reader saw an older version after a newer one"
    assert version_of(partial_lora.load(small_mlp(), folder)) == count


def test_a_reader_that_cannot_lock_retries_instead_of_failing(tmp_path, monkeypatch):
    """Where the folder cannot be locked (no fcntl, a file system without flock), loading
    reads config and tensors again when a save replaced them in between."""
    folder = tmp_path / "adapter"
    partial_lora.save(partial_lora.apply(small_mlp(), CONFIG), folder)
    monkeypatch.setattr(files_module, "fcntl", None)  # this process only; the writer locks as usual
    with folder_lock(folder, shared=True) as locked:
        assert not locked
    count = 40
    (writer,) = start_writers(folder, [(1, count)])
    loads, deadline = 0, time.monotonic() + 60
    while writer.poll() is None and time.monotonic() < deadline:
        loaded = partial_lora.load(small_mlp(), folder)
        if any(bool(layer.lora_B.any()) for layer in partial_lora.adapter_layers(loaded).values()):
            version_of(loaded)
        loads += 1
    finish([writer], [count])
    assert loads > 5
    assert version_of(partial_lora.load(small_mlp(), folder)) == count


def test_a_read_only_folder_still_loads(tmp_path):
    folder = tmp_path / "adapter"
    model = partial_lora.apply(small_mlp(), CONFIG)
    partial_lora.save(model, folder)
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    try:
        loaded = partial_lora.load(small_mlp(), folder)
        assert read_config(folder)["layers"].keys() == partial_lora.adapter_layers(loaded).keys()
    finally:
        folder.chmod(0o755)


@pytest.mark.skipif(files_module.fcntl is None, reason="needs fcntl.flock")
def test_the_folder_lock_is_exclusive_for_writers_and_shared_for_readers(tmp_path):
    events = []

    def take(shared, name):
        with folder_lock(tmp_path, shared=shared) as locked:
            assert locked
            events.append(name)

    with folder_lock(tmp_path, shared=True):
        reader = threading.Thread(target=take, args=(True, "second reader"))
        reader.start()
        reader.join(timeout=5)
        assert events == ["second reader"]  # readers do not wait for each other
        writer = threading.Thread(target=take, args=(False, "writer"))
        writer.start()
        time.sleep(0.2)
        assert events == ["second reader"]  # the writer waits for the reader
    writer.join(timeout=5)
    assert events == ["second reader", "writer"]
    assert list(tmp_path.iterdir()) == []  # no lock file is left behind
