"""What the study runs: three settings, and per setting the parts of docs/RESULTS.md.

Each part is one ``partial-lora compare`` call (or, for ``tickets``, ticket extraction only)
with its own output folder, so parts can be run, resumed and re-run one at a time.

======================  ==================================================================
part                    what it trains (RESULTS.md items)
======================  ==================================================================
main                    every method of the main table, plus targeted / stochastic / uniform
                        at the ticket's ratios (items 1, 3, 4, 8)
matched                 LoRA at the rank whose adapters count what Partial-LoRA's do (item 2)
thresholds              Partial-LoRA at tau 0.7 and 0.8, relative mode (item 5; 0.9 is main)
absolute                Partial-LoRA at tau 0.7 / 0.8 / 0.9, absolute mode (item 5)
ranks                   LoRA at rank 4 and Partial-LoRA at rank 16 (item 6; both at 8 are main)
tickets                 svd tickets at several shot counts, and snip / imp tickets (item 7)
======================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAIN_METHODS = ("full", "lora", "adalora", "vera", "dora", "random-masking", "partial-lora",
                "partial-adalora", "targeted", "stochastic", "uniform")
PARTS = ("main", "matched", "tickets", "thresholds", "absolute", "ranks")
SEEDS = (0, 1, 2)
EXTRA_THRESHOLDS = (0.7, 0.8)
ABSOLUTE_THRESHOLDS = (0.7, 0.8, 0.9)
# The seed's Fig. 6 comparison: a sparse adapter at twice the rank against a dense one at half.
RANK_SWEEP = {"lora": 4, "partial-lora": 16}
TICKET_METHODS = ("svd", "snip", "imp")

# CI's smoke version: the same parts on tiny slices (a few examples per class, one epoch).
SMOKE_DATA_ARGS = ("--train-per-class", "4", "--test-per-class", "2", "--max-length", "32")
SMOKE_TRAIN_ARGS = ("--shots", "2", "--epochs", "1", "--batch-size", "8")


@dataclass(frozen=True)
class Setting:
    """One model-and-data setting of the study.

    Attributes:
        dataset: the packaged dataset name (``partial-lora --dataset``).
        title: how the document names it.
        methods: the methods of the ``main`` part.
        parts: the parts run for this setting (costly settings run fewer; the document says so).
        shots: the shot counts of the ticket-stability part.
        ticket_methods: the ticket-extraction methods compared at the default shot count.
        extra_args: further ``compare`` options.
    """

    dataset: str
    title: str
    methods: tuple[str, ...] = MAIN_METHODS
    parts: tuple[str, ...] = PARTS
    shots: tuple[int, ...] = (4, 8, 16, 32)
    ticket_methods: tuple[str, ...] = TICKET_METHODS
    extra_args: tuple[str, ...] = field(default_factory=tuple)


SETTINGS = {
    "bbc": Setting("bbc", "MiniLM-L6 (all-MiniLM-L6-v2) on BBC News (5 classes, accuracy)"),
    "mnist": Setting("mnist", "EfficientNet-Lite0 on MNIST-5k (10 classes, accuracy)"),
    # SmolLM2 costs 3.5-6 CPU minutes per trained method and seed: only LoRA and Partial-LoRA
    # are trained (plus tickets); 24 training examples per class cap the shots at 16; imp (many
    # scoring passes, 2 minutes each here) is left out of the ticket-method comparison.
    "bbc-gen": Setting("bbc-gen", "SmolLM2-135M answering the BBC topic word (exact match)",
                       methods=("lora", "partial-lora"), parts=("main", "tickets"), shots=(4, 8, 16),
                       ticket_methods=("svd", "snip")),
}

SMOKE_SETTINGS = {
    "bbc": Setting("bbc", SETTINGS["bbc"].title, shots=(2, 3)),
    "mnist": Setting("mnist", SETTINGS["mnist"].title, shots=(2, 3)),
}
