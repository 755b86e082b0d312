"""Tickets: per-layer keep ratios and row/column scores from a few labelled examples.

The order of the method: :func:`find_ticket` (``find.py``) records target-layer inputs
(``recording.py``), scores the model with a head (``heads.py``, ``probe.py``) and a metric
(``metrics.py``), and derives ratios by one of the methods (``svd.py`` + ``svd_search.py``,
``snip.py``, ``magnitude_pruning.py`` for imp, uniform). The result is a :class:`Ticket` (``ticket.py``), saved as
JSON plus a safetensors sidecar, compared with :func:`ticket_overlap` (``overlap.py``) and
drawn with :func:`plot_keep_ratios` (``plot.py``).
"""

from .find import find_ticket
from .metrics import BUILTIN as METRICS
from .metrics import Metric
from .overlap import ticket_overlap
from .plot import plot_keep_ratios
from .ticket import LayerTicket, Provenance, Ticket, TicketFileError, scores_path

__all__ = [
    "LayerTicket",
    "METRICS",
    "Metric",
    "Provenance",
    "Ticket",
    "TicketFileError",
    "find_ticket",
    "plot_keep_ratios",
    "scores_path",
    "ticket_overlap",
]
