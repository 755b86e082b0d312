"""``python -m benchmarks.reliability``: run the families, print every failure and the summary."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import __doc__ as OVERVIEW
from . import (cli_inputs, concurrency, crash_save, crash_train, fingerprint, mutations, permissions, resume,
               yaml_configs)
from .common import Section, machine, summary

# family -> run(args, work) -> [Section]; in the order they run
FAMILIES = {
    "train": crash_train.run,
    "save": crash_save.run,
    "mutations": mutations.run,
    "cli": cli_inputs.run,
    "concurrency": concurrency.run,
    "yaml": yaml_configs.run,
    "resume": resume.run,
    "fingerprint": fingerprint.run,
    "permissions": permissions.run,
}
# the jobs child processes run (``--child NAME ARGS...``)
CHILDREN = {
    "train": crash_train.child,
    "save": crash_save.child,
    "writer": concurrency.child_writer,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=OVERVIEW.split("\n\n")[0])
    p.add_argument("--only", default=",".join(FAMILIES), help=f"comma-separated families (default: all of "
                                                              f"{', '.join(FAMILIES)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-kills", type=int, default=12, help="training runs killed with SIGKILL (default 12)")
    p.add_argument("--train-epochs", type=int, default=8, help="epochs of 5 steps per killed run (default 8)")
    p.add_argument("--save-kills", type=int, default=20, help="SIGKILLs during partial_lora.save (default 20)")
    p.add_argument("--mutations", type=int, default=300, help="mutated adapter folders (default 300)")
    p.add_argument("--concurrent-cases", type=int, default=6,
                   help="rounds of concurrent writers and readers of one folder (default 6)")
    p.add_argument("--no-concurrent-runs", action="store_true",
                   help="skip the case of two `partial-lora run` into one --out at once (~1 min)")
    p.add_argument("--resume-kills", type=int, default=3, help="`partial-lora run` children killed, then resumed "
                                                                "(default 3; ~40 s each)")
    p.add_argument("--fingerprint-edits", type=int, default=16,
                   help="random one-entry and one-row edits of a base weight (default 16)")
    p.add_argument("--case", help="run this one case of the family in --only (a number or a name; see the "
                                  "reproduce commands)")
    p.add_argument("--cli-case", dest="case", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--keep", action="store_true", help="keep the work folder, with every case's files")
    p.add_argument("--work", help="work folder (default: a new temporary folder)")
    p.add_argument("--verbose", action="store_true", help="print every mutation case and its outcome")
    p.add_argument("--json", help="also write the counts to this JSON file")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        name, *rest = args.child
        CHILDREN[name](*rest)
        return 0
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        parser().error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if args.case is not None and len(chosen) != 1:
        parser().error("--case needs exactly one family in --only")
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("partial_lora").setLevel(logging.WARNING)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="partial-lora-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"partial-lora reliability, seed {args.seed}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"work folder: {work}", flush=True)
    sections: list[Section] = []
    try:
        for name in chosen:
            family_work = work / name
            family_work.mkdir(parents=True, exist_ok=True)
            sections.extend(FAMILIES[name](args, family_work))
    finally:
        total = time.perf_counter() - started
        for section in sections:
            print(f"\n== {section.name}: {section.tried} tried, {section.clean + section.accepted} handled cleanly, "
                  f"{len(section.failures)} not clean, {section.noop} no-op ({section.seconds:.0f} s)")
            if not section.name.startswith("cli"):
                section.print_kinds()
            section.print_failures()
            for note in section.notes:
                print(f"  note: {note}")
        print("\n" + summary(sections))
        print(f"\ntotal {total:.0f} s")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "seed": args.seed, "seconds": total, "machine": machine(), "argv": sys.argv,
                "sections": [s.__dict__ for s in sections]}, indent=1, default=str))
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"kept {work}")
    return 1 if any(s.failures for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
