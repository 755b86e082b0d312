"""The Partial-LoRA study (``python -m studies.study``): the runs behind docs/RESULTS.md."""
