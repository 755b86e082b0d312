"""Reliability counts: crash points, damaged files, bad input, concurrency, resume, permissions.

Tries many seeded cases in nine families and prints, for each, how many were tried, how many
were handled cleanly, and every case that was not, with a command that reproduces it. Each
family is one module, whose docstring says what it tries and what counts as clean:

* :mod:`.crash_train` (``train``): training killed with SIGKILL, then resumed bit-identically;
* :mod:`.crash_save` (``save``): ``partial_lora.save`` killed with SIGKILL;
* :mod:`.mutations` (``mutations``): damaged and hostile adapter folders;
* :mod:`.cli_inputs` (``cli``): bad command lines;
* :mod:`.concurrency` (``concurrency``): processes saving into one folder while others load it,
  and two ``partial-lora run`` into one ``--out``;
* :mod:`.yaml_configs` (``yaml``): hostile or mistyped ``--config`` files;
* :mod:`.resume` (``resume``): ``--resume`` with changed settings or data, and runs killed then resumed;
* :mod:`.fingerprint` (``fingerprint``): adapters loaded onto other base weights;
* :mod:`.permissions` (``permissions``): file modes under two umasks, read-only or full disks.

:mod:`.common` holds what they share (the counts, the summary table, child processes).

    python -m benchmarks.reliability                          # every family, defaults, seed 0
    python -m benchmarks.reliability --only resume,yaml       # some families
    python -m benchmarks.reliability --only mutations --case 17 --keep   # one case, folder kept
    python benchmarks/reliability.py ...                      # the same (the old command)

Every process uses one intra-op thread (a tiny model trains much faster on one thread than on
two contended ones, and the reference and the killed runs must use the same thread count).
"""
