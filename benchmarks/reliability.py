"""The old command: ``python benchmarks/reliability.py ...`` runs ``python -m benchmarks.reliability ...``
(the families live in the package ``benchmarks/reliability/``; see its ``__init__``)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, so `benchmarks` imports
    from benchmarks.reliability.__main__ import main

    sys.exit(main())
