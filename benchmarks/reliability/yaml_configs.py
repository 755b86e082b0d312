"""``yaml``: hostile and mistyped ``--config`` files.

Each case is one YAML file (text or raw bytes) and what it should do:

* **refused**: ``partial_lora.cli.main(["run", "--config", FILE, "--out", OUT, ...tiny flags])``,
  in a forked child, into an ``--out`` that holds an earlier run, with ``--overwrite`` on the
  command line or (every other case) ``overwrite: true`` in the YAML. Clean: exit 2, one
  message naming the key (or, for a file that is not a mapping of options, the file), no
  traceback, nothing created or changed in the case's folder (the earlier run byte-identical,
  no work folder), and no ``!!python`` tag run (its marker folder is never made);
* **same as flags**: the Settings the file gives equal those of the equivalent flags
  (``settings_from_args`` of both; nothing is run).

Every value is the text the flag would get (YAML's own typing is not used), so a text the flag
refuses (``0x10`` for ``--seed``) is refused in the file too; anchors, aliases and tags other
than ``!!str``, ``!!int``, ``!!float`` and ``!!bool`` are refused.

Tiny flags whose key the YAML sets are left off the command line, so the YAML's value is the
one used.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .common import (TINY, CliResult, Section, Timer, differences, earlier_run, packaged_cache, run_cli, run_isolated,
                     say, snapshot)

MARKER = "python-tag-ran"
MAIN_TIMEOUT = 40  # seconds for main() to refuse a value (it takes about one)
RUN_AHEAD_TIMEOUT = 15  # seconds for a run whose settings were accepted to be refused later


@dataclass
class Refused:
    name: str
    text: str | bytes
    words: list[str]  # each must be in the message ("a|b": either)
    mapping: bool = True  # a mapping of options, to which ``overwrite: true`` can be added


@dataclass
class Same:
    name: str
    text: str | bytes
    flags: list[str] = field(default_factory=list)


def laughs(depth: int) -> str:
    """A list whose aliases expand to ``9 ** depth`` strings (it parses as shared references)."""
    levels = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, depth)]
    return f"methods: [{', '.join(levels)}]\n"


CASES: list[Refused | Same] = [
    # flags (overwrite, resume) take true/false, yes/no, on/off, quoted or not (the text is read)
    Same("overwrite a quoted string", 'overwrite: "true"\n', ["--overwrite"]),
    Same("overwrite a quoted 'false'", 'overwrite: "false"\n', []),
    Refused("overwrite 1", "overwrite: 1\n", ["overwrite"], mapping=False),
    Refused("resume null", "resume:\n", ["resume"]),
    Refused("resume a list", "resume: [true]\n", ["resume"]),
    Same("overwrite yes", "overwrite: yes\n", ["--overwrite"]),
    Same("overwrite false", "overwrite: false\n", []),
    # numbers: what the flag takes, written as a YAML scalar
    Refused("epochs a list", "epochs: [1, 2]\n", ["epochs"]),
    Refused("epochs 3.0", "epochs: 3.0\n", ["epochs"]),
    Refused("epochs true", "epochs: true\n", ["epochs"]),
    Refused("epochs a word", "epochs: three\n", ["epochs"]),
    Refused("epochs a mapping", "epochs: {a: 1}\n", ["epochs"]),
    Refused("epochs -1", "epochs: -1\n", ["epochs"]),
    Refused("epochs 1:30 (YAML 1.1 reads base 60)", "epochs: 1:30\n", ["epochs"]),
    Refused("learning_rate a word", "learning_rate: fast\n", ["learning_rate"]),
    Refused("learning_rate .inf", "learning_rate: .inf\n", ["learning_rate"]),
    Refused("learning_rate .nan", "learning_rate: .nan\n", ["learning_rate"]),
    Refused("learning_rate a list", "learning_rate: [0.001]\n", ["learning_rate"]),
    Refused("learning_rate !!binary", "learning_rate: !!binary aGVsbG8=\n", ["learning_rate"]),
    Refused("alpha 1e400", "alpha: 1e400\n", ["alpha"]),
    Refused("shots empty string", 'shots: ""\n', ["shots"]),
    Refused("shots null", "shots:\n", ["shots"]),
    Same("epochs a quoted number", "epochs: '3'\n", ["--epochs", "3"]),
    Same("epochs !!int", "epochs: !!int '3'\n", ["--epochs", "3"]),
    Same("learning_rate 1e-3 (a YAML string)", "learning_rate: 1e-3\n", ["--learning-rate", "1e-3"]),
    Same("threshold .9", "threshold: .9\n", ["--threshold", ".9"]),
    Same("max_length with a comment", "max_length: 16  # tokens\n", ["--max-length", "16"]),
    Refused("seed 0x10 (the flag refuses it too)", "seed: 0x10\n", ["seed"]),
    Same("seed 010 (the flag reads ten)", "seed: 010\n", ["--seed", "010"]),
    # comma-separated options: a YAML list or the flag's text
    Refused("seeds a nested list", "seeds: [0, [1]]\n", ["seeds"]),
    Refused("seeds [true]", "seeds: [true]\n", ["seeds"]),
    Refused("seeds []", "seeds: []\n", ["seeds"]),
    Refused("seeds a mapping", "seeds: {a: 1}\n", ["seeds"]),
    Refused("seeds '0 1'", "seeds: 0 1\n", ["seeds"]),
    Refused("methods with a number", "methods: [lora, 3]\n", ["method"]),
    Refused("methods []", "methods: []\n", ["methods"]),
    Refused("methods: aliases expanding to 9**9 strings", laughs(9), ["methods"]),
    Refused("target_modules a mapping", "target_modules: {query: 1}\n", ["target_modules"]),
    Refused("target_modules a nested list", "target_modules: [query, [value]]\n", ["target_modules"]),
    Refused("target_modules !!set", "target_modules: !!set {query: null}\n", ["target_modules|target-modules"]),
    Same("seeds [0, 1]", "seeds: [0, 1]\n", ["--seeds", "0,1"]),
    Same("seeds '0, 1'", "seeds: '0, 1'\n", ["--seeds", "0,1"]),
    Same("methods a list", "methods: [lora, partial-lora]\n", ["--methods", "lora,partial-lora"]),
    Same("target_modules a list", "target_modules: [query, value]\n", ["--target-modules", "query,value"]),
    Same("target_modules a regex", "target_modules: '(query|value)'\n", ["--target-modules", "(query|value)"]),
    Same("modules_to_save one name", "modules_to_save: classifier\n", ["--modules-to-save", "classifier"]),
    Same("lr_grid a list", "lr_grid: [1e-3, 2e-3]\n", ["--lr-grid", "1e-3,2e-3"]),
    Refused("anchor and alias", "seed: &s 3\nseeds: [*s]\n", ["seed"]),
    # texts and paths
    Refused("model a list", "model: [minilm]\n", ["model"]),
    Refused("dataset null", "dataset: ~\n", ["dataset"]),
    Refused("out null", "out: null\n", ["out"]),
    Refused("ticket a mapping", "ticket: {path: x}\n", ["ticket"]),
    Refused("out !!binary", "out: !!binary aGVsbG8=\n", ["out"]),
    Same("out a number", "out: 5\n", ["--out", "5"]),
    Same("dataset a YAML date", "dataset: 2024-01-01\n", ["--dataset", "2024-01-01"]),
    Same("text_column a number", "text_column: 12\n", ["--text-column", "12"]),
    # keys
    Refused("unknown key (a typo)", "epoch: 3\n", ["epoch"]),
    Refused("a nested mapping", "training: {epochs: 3}\n", ["training"]),
    Refused("key null", "null: 3\n", ["None|null"]),
    Refused("key a number", "1: 2\n", ["['1']"]),
    Refused("key true", "true: 1\n", ["True|true"]),
    Refused("duplicate key", "epochs: 1\nepochs: 3\n", ["epochs"]),
    Refused("one key in both spellings", "learning_rate: 0.001\nlearning-rate: 0.002\n",
            ["learning_rate|learning-rate"]),
    Same("a dashed key", "learning-rate: 0.002\n", ["--learning-rate", "0.002"]),
    # the whole file
    Refused("a list document", "- epochs: 1\n", ["mapping"], mapping=False),
    Refused("a scalar document", "3\n", ["mapping"], mapping=False),
    Refused("two documents", "epochs: 1\n---\nepochs: 2\n", ["YAML"], mapping=False),
    Refused("not UTF-8 (latin-1)", "dataset: café.csv\n".encode("latin-1"), ["YAML|UTF-8|utf-8"], mapping=False),
    Refused("UTF-16", "epochs: 2\n".encode("utf-16"), ["YAML|UTF-8|utf-8"], mapping=False),
    Refused("a tab in the indentation", "epochs: 1\n\tshots: 2\n", ["YAML"], mapping=False),
    Refused("unhashable key", "? [a, b]\n: 1\n", ["YAML"], mapping=False),
    Refused("a value nested 10 000 deep", "epochs: " + "[" * 10_000 + "]" * 10_000 + "\n", ["YAML|epochs"],
            mapping=False),
    Refused("!!python/object/apply (must not run)", f"dataset: !!python/object/apply:os.mkdir ['{MARKER}']\n",
            ["YAML"], mapping=False),
    Refused("!!python/name", "model: !!python/name:os.system\n", ["YAML"], mapping=False),
    Same("a UTF-8 byte-order mark", "\ufeffepochs: 2\n", ["--epochs", "2"]),
    Same("CRLF line ends", "epochs: 2\r\nshots: 4\r\n", ["--epochs", "2", "--shots", "4"]),
    Same("an empty file", "", []),
    Same("only a comment", "# nothing here\n", []),
]


def write_config(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def settings_of(argv: list[str]):
    from partial_lora.cli import build_parser, settings_from_args

    return settings_from_args(build_parser().parse_args(argv)).to_dict()


def flags_without(keys: str) -> list[str]:
    """The tiny flags, less those whose option the YAML text sets."""
    kept, index = [], 0
    while index < len(TINY):
        flag = TINY[index]
        takes_value = index + 1 < len(TINY) and not TINY[index + 1].startswith("--")
        key = flag[2:].replace("-", "_")
        if key not in keys and key.replace("_", "-") not in keys:
            kept += TINY[index:index + 1 + takes_value]
        index += 1 + takes_value
    return kept


def check_refused(case: Refused, index: int, folder: Path) -> list[str]:
    out = folder / "out"
    earlier_run(out)
    text = case.text
    in_yaml = case.mapping and index % 2 == 1 and isinstance(text, str)
    if in_yaml:
        text += "overwrite: true\n"
    config = write_config(folder / "run.yaml", text)
    shown = text if isinstance(text, str) else text.decode("latin-1")
    argv = ["run", "--config", str(config), "--out", str(out), *flags_without(shown)]
    if not in_yaml:
        argv.append("--overwrite")
    before = snapshot(folder)

    def attempt() -> dict:
        os.chdir(folder)  # a value taken as a relative --out lands here, where it is seen
        result = run_cli(argv)
        return {"code": result.code, "stdout": result.stdout[-2000:], "stderr": result.stderr[-4000:],
                "escaped": result.escaped}

    # A value the settings accept starts a run: a refusal later than that comes within seconds.
    parsed = run_isolated(lambda: {"refused": refused_by_settings(argv)}, timeout=MAIN_TIMEOUT)
    if "refused" not in parsed:
        return [f"reading the settings: {parsed['outcome']}: {parsed['message']}"]
    timeout = MAIN_TIMEOUT if parsed["refused"] else RUN_AHEAD_TIMEOUT
    outcome = run_isolated(attempt, timeout=timeout)
    if "code" not in outcome:
        if timeout == RUN_AHEAD_TIMEOUT:
            return [f"accepted: the run went ahead (still running after {timeout} s, killed); "
                    + "; ".join(differences(before, snapshot(folder)))]
        return [f"main() {outcome['outcome']}: {outcome['message']}"]
    result = CliResult(outcome["code"], outcome["stdout"], outcome["stderr"], outcome["escaped"])
    problems = result.refusal_problems(case.words)
    problems += differences(before, snapshot(folder))
    if (folder / MARKER).exists():
        problems.append("a !!python tag was run (its marker folder exists)")
    return problems


def refused_by_settings(argv: list[str]) -> bool:
    from partial_lora.cli import UsageError

    try:
        settings_of(argv)
    except (UsageError, SystemExit, RecursionError):
        return True
    return False


def check_same(case: Same, folder: Path) -> list[str]:
    from partial_lora.cli import UsageError

    config = write_config(folder / "run.yaml", case.text)
    want = settings_of(["run", *case.flags])
    try:
        have = settings_of(["run", "--config", str(config)])
    except UsageError as err:
        return [f"refused a value the flags {case.flags} accept: {err}"]
    differ = {k: (have[k], want[k]) for k in want if have.get(k) != want[k]}
    if differ:
        return ["the YAML gives " + ", ".join(f"{k}={v[0]!r}" for k, v in differ.items()) + ", the flags "
                + ", ".join(f"{k}={v[1]!r}" for k, v in differ.items())]
    return []


def run(args, work: Path) -> list[Section]:
    section = Section("yaml", "hostile or mistyped --config YAML files")
    with Timer(section), packaged_cache(work):
        for index, case in enumerate(CASES):
            if args.case is not None and args.case != case.name:
                continue
            folder = work / f"yaml-{index:02d}"
            folder.mkdir(parents=True)
            if isinstance(case, Refused):
                kind, problems = "refused", check_refused(case, index, folder)
            else:
                kind, problems = "same as flags", check_same(case, folder)
            section.record(kind, f"yaml '{case.name}' ({case.text[:60]!r})", problems,
                           f"python -m benchmarks.reliability --only yaml --case '{case.name}' --keep")
            verdict = "clean" if not problems else "NOT CLEAN: " + "; ".join(problems)
            say("yaml", f"{case.name}: {kind}: {verdict}"[:400])
            if not args.keep and not problems:
                shutil.rmtree(folder, ignore_errors=True)
    return [section]
