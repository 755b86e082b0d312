"""What each ``partial-lora`` command does (the parser is :mod:`partial_lora.cli`).

Each ``<name>_command(settings, args)`` carries out one command and returns its exit status:

* :mod:`.compare` - ``run`` (the main job) and ``compare``;
* :mod:`.make` - ``ticket`` and ``train``;
* :mod:`.adapters` - ``eval``, ``export`` and ``merge`` of a saved adapter.

They share :mod:`.settings` (every option, validated), :mod:`.task` (data splits, model
factory, batches, evaluation), :mod:`.runs` (input checks, tickets, training one method),
:mod:`.output` (the ``--out`` folder) and :mod:`.report` (``results.json``, ``report.md``, plots).
"""

from .adapters import eval_command, export_command, merge_command
from .compare import compare_command, run_command
from .make import ticket_command, train_command

__all__ = ["compare_command", "eval_command", "export_command", "merge_command", "run_command",
           "ticket_command", "train_command"]
