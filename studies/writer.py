"""The document being written: its lines, its images, and what each section says is missing."""

from __future__ import annotations

from pathlib import Path

from .analysis import Evidence
from .runs import SettingRuns


class Writer:
    """Collects the markdown lines of docs/RESULTS.md and knows where its PNGs go.

    Attributes:
        doc: the markdown file; images go to ``doc.parent / 'results'``.
        evidence: ``{setting name: Evidence}`` (the runs read, with their comparisons).
        runs_folder: where the runs were read from (named in the document).
    """

    def __init__(self, doc: Path, evidence: dict[str, Evidence], runs_folder: Path) -> None:
        self.doc, self.evidence, self.runs_folder = doc, evidence, runs_folder
        self.images = doc.parent / "results"
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def image(self, name: str, alt: str) -> None:
        self.add(f"![{alt}](results/{name})", "")

    def commands(self, runs: SettingRuns, *parts: str) -> None:
        """A folded block with the ``partial-lora`` commands behind ``parts``."""
        made = [runs.commands[p] for p in parts if p in runs.commands]
        if made:
            self.add("<details><summary>commands</summary>", "", "```", *made, "```", "", "</details>", "")

    def by_setting(self):
        """``(name, evidence, runs)`` of each setting, its subsection heading written first."""
        for name, evidence in self.evidence.items():
            self.add(f"### {evidence.runs.setting.title}", "")
            yield name, evidence, evidence.runs

    def not_trained_yet(self, methods: list[str]) -> None:
        """Say that methods the main part plans have no runs yet (the study is under way)."""
        self.add(f"*Not trained yet: {', '.join(methods)} (planned in the main part).*", "")

    def missing(self, runs: SettingRuns, *parts: str) -> bool:
        """Say which of ``parts`` were not planned, have no results yet, or were cut short.

        Returns True when one of them is absent (not planned or not run), so a section that
        needs all of them can stop; a section that can show a subset decides for itself.
        """
        skipped = [p for p in parts if p not in runs.setting.parts]
        absent = [p for p in parts if p in runs.setting.parts and not runs.has(p)]
        cut = [p for p in parts if p in runs.incomplete]
        if skipped:
            self.add(f"*Not run for this setting: {', '.join(skipped)} (cost; see `studies/plan.py`).*", "")
        if absent:
            self.add(f"*Missing: part(s) {', '.join(absent)} have no results yet.*", "")
        if cut:
            self.add(f"*Incomplete: part(s) {', '.join(cut)} were cut short; the rows below are the runs that "
                     "finished (see the seeds column).*", "")
        return bool(skipped or absent)
