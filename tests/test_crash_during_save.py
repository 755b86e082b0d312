"""kill -9 during ``partial_lora.save``: the folder holds the previous adapter or the new one, whole.

A child process saves version 1, 2, 3, ... of an adapter into one folder, as fast as it can
(the B matrices of version ``v`` are filled with ``v``). The parent kills it with SIGKILL at
random moments and loads the folder each time: it must load, and hold exactly one version,
never a mix of two and never an error.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

import partial_lora
from fixtures import small_mlp

CHILD = "import sys; from fixtures import save_versions_until_killed; save_versions_until_killed(sys.argv[1])"




@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_during_save_leaves_one_whole_version(tmp_path):
    folder = tmp_path / "adapter"
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    kills, versions_seen = 0, set()
    for attempt in range(5):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], stdout=subprocess.PIPE, env=env, text=True)
        first = child.stdout.readline()  # at least one version saved by this child
        assert first.strip().isdigit(), first
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        printed = [int(line) for line in [first, *child.stdout.read().split()] if str(line).strip()]
        child.wait()
        kills += 1
        model = partial_lora.load(small_mlp(), folder)  # must not raise
        values = {float(v) for layer in partial_lora.adapter_layers(model).values() for v in layer.lora_B.unique()}
        assert len(values) == 1, f"a mix of versions {values} after kill {kills}"
        version = int(values.pop())
        # the folder holds the last version reported saved, or the one being saved when killed
        assert version in (printed[-1], printed[-1] + 1), (version, printed[-3:])
        versions_seen.add(version)
    assert kills == 5
    partial_lora.save(partial_lora.load(small_mlp(), folder), folder)
    assert not list(folder.glob(".*.tmp")), "a save leaves no temporary files of killed saves behind"
