"""Experiments: the main job (`partial-lora run`), comparisons and their reports.

``settings`` holds what a run needs, ``commands`` carries out each CLI command, ``report``
writes ``results.json``, ``report.md`` and plots.
"""
