"""What every family shares: the counts (:class:`Section`), the summary table, the machine,
child processes, forked loads, folder snapshots and in-process CLI runs.

Importing this module pins every process to one intra-op thread and puts ``tests/`` on the
path, so a family imports the tests' own builders with ``from fixtures import ...``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import partial_lora  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # fixtures.py: the tests' builders, never copied here
COMMAND = "python -m benchmarks.reliability"

# `partial-lora run` on the packaged MiniLM with tiny splits: a whole run takes ~20 s.
TINY = ["--train-per-class", "6", "--validation-per-class", "2", "--test-per-class", "2", "--epochs", "1",
        "--shots", "4", "--max-length", "16", "--quiet"]


# -- counts --------------------------------------------------------------------------------
@dataclass
class Section:
    """The counts of one family (or one part of it), as the summary table shows them."""

    name: str
    label: str
    tried: int = 0
    clean: int = 0
    noop: int = 0  # no-ops (mutations), finished before the kill (crash points): not counted as tried
    accepted: int = 0  # mutations: re-signed, self-consistent edits that load into another adapter
    failures: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)  # one per failure: failures alike share it
    notes: list[str] = field(default_factory=list)
    kinds: dict[str, list[int]] = field(default_factory=dict)  # kind -> [tried, clean]
    seconds: float = 0.0

    def count(self, kind: str, clean: bool) -> None:
        entry = self.kinds.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += int(clean)

    def record(self, kind: str, what: str, problems: Sequence[str], reproduce: str) -> bool:
        """One tried case: clean when ``problems`` is empty, else listed with its reproduce command."""
        self.tried += 1
        self.count(kind, not problems)
        if problems:
            self.failures.append(f"{what}: {'; '.join(problems)}\n      reproduce: {reproduce}")
        else:
            self.clean += 1
        return not problems

    def print_kinds(self, title: str = "kind") -> None:
        if not self.kinds:
            return
        width = max([len(title)] + [len(k) for k in self.kinds])
        print(f"  {title:<{width}}  tried  clean")
        for kind, (tried, clean) in sorted(self.kinds.items()):
            print(f"  {kind:<{width}}  {tried:5d}  {clean:5d}")

    def print_failures(self) -> None:
        """Every failure; of failures alike (same signature) the first in full, the others by name."""
        if len(self.signatures) != len(self.failures):
            for failure in self.failures:
                print(f"  NOT CLEAN: {failure}")
            return
        groups: dict[str, list[str]] = {}
        for signature, failure in zip(self.signatures, self.failures):
            groups.setdefault(signature, []).append(failure)
        for failures in groups.values():
            print(f"  NOT CLEAN ({len(failures)} case(s) like this): {failures[0]}")
            if len(failures) > 1:
                print("      the others: " + ", ".join(f.split(":")[0] for f in failures[1:]))


class Timer:
    """``with Timer(section):`` adds the block's wall time to ``section.seconds``."""

    def __init__(self, section: Section) -> None:
        self.section = section

    def __enter__(self) -> Section:
        self.started = time.perf_counter()
        return self.section

    def __exit__(self, *exc: Any) -> None:
        self.section.seconds += time.perf_counter() - self.started


def summary(sections: list[Section]) -> str:
    lines = ["| family | tried | handled cleanly | not clean | no-ops, not counted | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in sections:
        clean = f"{s.clean + s.accepted}" + (f" ({s.accepted} accepted edits)" if s.accepted else "")
        lines.append(f"| {s.label} | {s.tried} | {clean} | {len(s.failures)} | {s.noop} | {s.seconds:.0f} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs (load {load}), "
            f"python {platform.python_version()}, torch {torch.__version__}, partial-lora {partial_lora.__version__}")


def say(family: str, text: str) -> None:
    print(f"[{family}] {text}", flush=True)


# -- child processes -----------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """The environment of a child: one thread, offline, and this interpreter's import path."""
    path = [str(REPO), *(p for p in sys.path if p)]
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join(path))


def child_command(*args: str) -> list[str]:
    """A child running one of this package's ``--child`` jobs (see ``__main__.CHILDREN``)."""
    return [sys.executable, "-m", "benchmarks.reliability", "--child", *map(str, args)]


def cli_command(*args: str) -> list[str]:
    """``partial-lora ARGS`` in a child (the source tree on the path, not an installed copy)."""
    return [sys.executable, "-m", "partial_lora.cli", *map(str, args)]


def run_isolated(function: Callable[[], dict], timeout: float) -> dict[str, Any]:
    """``function()`` in a forked child: a crash or a hang is reported, not fatal.

    The child's address space is capped at its current size plus 4 GiB; it returns a
    JSON-able dict, or ``{"outcome": "crash" | "hang", "message": ...}`` comes back.
    """
    if not hasattr(os, "fork"):
        return function()
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read)
            import resource

            status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
            size = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:")), 0)
            if size:
                limit = size + (4 << 30)
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            data = json.dumps(function(), default=str).encode()
            with os.fdopen(write, "wb") as stream:
                stream.write(data)
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read, "rb") as stream:
        while True:
            ready, _, _ = select.select([stream], [], [], 0.05)
            if ready:
                chunk = os.read(stream.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"outcome": "hang", "message": f"no answer after {timeout:.0f} s"}
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"outcome": "crash", "message": f"the child died of signal {os.WTERMSIG(status)}"}
    if not chunks:
        return {"outcome": "crash", "message": f"the child exited with {os.WEXITSTATUS(status)} and no answer"}
    return json.loads(b"".join(chunks))


def project_frames(text: str) -> str:
    """The frames of a traceback that lie in partial_lora, and its last line."""
    lines = text.rstrip().splitlines()
    kept = []
    for index, line in enumerate(lines):
        if line.lstrip().startswith("File ") and "partial_lora" in line:
            kept.append(line.strip())
            if index + 1 < len(lines):
                kept.append("  " + lines[index + 1].strip())
    return "\n".join(kept + [lines[-1]]) if lines else ""


# -- folders -------------------------------------------------------------------------------
def folder_files(folder: Path) -> dict[str, bytes]:
    """``{name: bytes}`` of the plain files directly in ``folder``."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def snapshot(folder: Path, *, times: bool = True) -> dict[str, tuple[str, int]]:
    """``{relative path: (sha256, mtime_ns)}`` of everything under ``folder`` (folders as ``"dir"``)."""
    found: dict[str, tuple[str, int]] = {}
    if not folder.exists():
        return found
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = ("link " + os.readlink(path), 0)
        elif path.is_file():
            found[name] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns if times else 0)
        elif path.is_dir():
            found[name + "/"] = ("dir", 0)
    return found


def differences(before: dict, after: dict) -> list[str]:
    """What changed between two :func:`snapshot` s, as one short problem (or none)."""
    created = sorted(set(after) - set(before))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    removed = sorted(set(before) - set(after))
    if not (created or changed or removed):
        return []
    return [f"files created {created[:5]}, changed {changed[:5]}, removed {removed[:5]}"]


def earlier_run(out: Path) -> None:
    """A stand-in for a finished run in ``out``: the results a refused command must not cost."""
    (out / "adapters" / "lora-seed0").mkdir(parents=True)
    (out / "results.json").write_text('{"results": [{"method": "lora"}]}\n')
    (out / "report.md").write_text("# an earlier run\n")
    (out / "ticket.json").write_text("{}\n")
    (out / "adapters" / "lora-seed0" / "adapter_model.safetensors").write_bytes(b"earlier adapter")


def work_folders(out: Path) -> list[str]:
    """The work or old folders partial-lora keeps beside ``out`` (``.<name>.partial-lora-*``)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.partial-lora-*"))


# -- the command line, in this process ---------------------------------------------------------
@dataclass
class CliResult:
    code: Any
    stdout: str
    stderr: str
    escaped: str | None  # an exception that left main(), with its project frames

    def message(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return next((line for line in lines if "error:" in line), lines[-1] if lines else "")

    def refusal_problems(self, words: Sequence[str] = ()) -> list[str]:
        """What keeps this from being a clean refusal: exit 2, one message naming ``words``, no traceback."""
        if self.code == 0:
            return ["exit status 0: accepted, not refused"]
        problems = []
        if self.escaped:
            problems.append(f"an exception escaped main(): {self.escaped}")
        elif self.code != 2:
            problems.append(f"exit status {self.code!r}, not 2")
        message = self.message()
        if not message:
            problems.append("nothing on stderr")
        if "Traceback" in self.stderr:
            problems.append("a traceback on stderr")
        missing = [w for w in words if not any(alt.lower() in self.stderr.lower() for alt in w.split("|"))]
        if missing and not self.escaped:
            problems.append(f"the message does not name {missing}: {message[:200]!r}")
        return problems


def run_cli(argv: Sequence[str]) -> CliResult:
    """``partial_lora.cli.main(argv)`` with stdout and stderr captured."""
    from partial_lora.cli import main

    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        except BaseException as caught:  # noqa: BLE001 - every failure is counted
            if isinstance(caught, KeyboardInterrupt):
                raise
            code, escaped = None, f"{type(caught).__name__}: {caught}\n{project_frames(traceback.format_exc())}"
    return CliResult(code, out.getvalue(), err.getvalue(), escaped)


@contextlib.contextmanager
def packaged_cache(work: Path):
    """``PARTIAL_LORA_CACHE`` pointed into the work folder for the duration."""
    cache = work / "cli-cache"
    cache.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("PARTIAL_LORA_CACHE")
    os.environ["PARTIAL_LORA_CACHE"] = str(cache)
    try:
        yield cache
    finally:
        if previous is None:
            os.environ.pop("PARTIAL_LORA_CACHE", None)
        else:
            os.environ["PARTIAL_LORA_CACHE"] = previous
