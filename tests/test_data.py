"""Data for the command line: packaged sets, user files, seeded splits, few-shot samples, batches."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from partial_lora import data as data_lib
from partial_lora.data import LabelledData, few_shot, generation_batches, load_dataset, stratified_split, text_batches
from conftest import numbered, write_csv


@pytest.fixture(scope="module")
def bbc():
    return load_dataset("bbc")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from partial_lora.models import packaged_minilm_folder

    return AutoTokenizer.from_pretrained(packaged_minilm_folder())


# -- packaged datasets -----------------------------------------------------------------
def test_bbc_has_2225_articles_in_5_classes(bbc):
    assert len(bbc) == 2225
    assert len(bbc.label_names) == 5
    assert bbc.kind == "text"
    assert sorted(Counter(bbc.labels).values()) == [386, 401, 417, 510, 511]
    assert all(isinstance(text, str) and len(text) > 100 for text in bbc.examples[:20])


def test_mnist_is_5000_uint8_digits_500_per_class():
    mnist = load_dataset("mnist")
    assert isinstance(mnist.examples, torch.Tensor)
    assert mnist.examples.dtype == torch.uint8
    assert tuple(mnist.examples.shape) == (5000, 1, 28, 28)
    assert Counter(mnist.labels) == {digit: 500 for digit in range(10)}
    assert mnist.label_names == [str(d) for d in range(10)]
    assert mnist.kind == "image"
    assert int(mnist.examples.max()) > 200  # real pixel intensities, not a scaled copy


def test_bbc_gen_prompts_ask_for_the_topic_and_answers_are_label_words():
    gen = load_dataset("bbc-gen")
    assert gen.kind == "generation" and len(gen) == 2225
    some = gen.subset([0, 600, 1200, 1800, 2224])
    for prompt, answer, label in zip(some.prompts, some.answers, some.labels):
        assert prompt.endswith("Topic:")
        assert answer == gen.label_names[label]
        for name in gen.label_names:  # every choice is offered
            assert name in prompt
    assert set(gen.answers) == set(gen.label_names)


def test_prompts_exist_only_for_generation_tasks(bbc):
    with pytest.raises(ValueError, match="generation"):
        bbc.prompts


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not a packaged dataset"):
        load_dataset("no-such-dataset")


# -- splits and few-shot samples --------------------------------------------------------
def test_stratified_split_is_seeded_disjoint_and_per_class():
    dataset = numbered({"a": 50, "b": 30, "c": 20})
    train, test = stratified_split(dataset, test_fraction=0.2, seed=3)
    assert not set(train.examples) & set(test.examples)
    assert len(train) + len(test) == len(dataset)
    assert Counter(test.labels) == {0: 10, 1: 6, 2: 4}
    assert Counter(train.labels) == {0: 40, 1: 24, 2: 16}
    again_train, again_test = stratified_split(dataset, test_fraction=0.2, seed=3)
    assert again_test.examples == test.examples and again_train.examples == train.examples
    _, other_test = stratified_split(dataset, test_fraction=0.2, seed=4)
    assert other_test.examples != test.examples


def test_stratified_split_refuses_bad_fractions_and_singleton_classes():
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(numbered({"a": 5, "b": 5}), test_fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="'b'"):
        stratified_split(numbered({"a": 5, "b": 1}), test_fraction=0.2, seed=0)


def test_few_shot_takes_k_per_class_seeded():
    dataset = numbered({"a": 40, "b": 25, "c": 12})
    shots = few_shot(dataset, 4, seed=0)
    assert Counter(shots.labels) == {0: 4, 1: 4, 2: 4}
    assert all(text.split()[0] == shots.label_names[label] for text, label in zip(shots.examples, shots.labels))
    assert few_shot(dataset, 4, seed=0).examples == shots.examples
    assert few_shot(dataset, 4, seed=1).examples != shots.examples


def test_few_shot_on_a_small_class_names_the_class_and_shots():
    dataset = numbered({"big": 20, "tiny": 3})
    with pytest.raises(ValueError, match="shots") as info:
        few_shot(dataset, 4, seed=0)
    assert "'tiny'" in str(info.value) and "3" in str(info.value)
    with pytest.raises(ValueError, match="shots"):
        few_shot(dataset, 0, seed=0)


# -- user files ------------------------------------------------------------------------
ROWS = [
    {"text": "stocks fell sharply today", "label": "business"},
    {"text": "the striker scored twice", "label": "sport"},
    {"text": "shares rallied on profits", "label": "business"},
    {"text": "the keeper saved a penalty", "label": "sport"},
    {"text": "markets closed higher", "label": "business"},
    {"text": "a late winner in the derby", "label": "sport"},
]


def check_rows_loaded(dataset: LabelledData) -> None:
    assert len(dataset) == len(ROWS)
    assert dataset.label_names == ["business", "sport"]
    assert list(dataset.examples) == [row["text"] for row in ROWS]
    assert dataset.labels == [0, 1, 0, 1, 0, 1]


def test_csv_loads(tmp_path):
    check_rows_loaded(load_dataset(str(write_csv(tmp_path / "news.csv", ROWS))))


def test_jsonl_loads(tmp_path):
    path = tmp_path / "news.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n", encoding="utf-8")
    check_rows_loaded(load_dataset(str(path)))


def test_datasets_folder_loads(tmp_path):
    import datasets

    folder = tmp_path / "news"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    check_rows_loaded(load_dataset(str(folder)))


def test_other_column_names_load_with_the_flags(tmp_path):
    rows = [{"body": row["text"], "topic": row["label"]} for row in ROWS]
    path = write_csv(tmp_path / "news.csv", rows)
    check_rows_loaded(load_dataset(str(path), text_column="body", label_column="topic"))


def test_integer_labels_sort_numerically(tmp_path):
    rows = [{"text": f"example {i}", "label": str(label)} for i, label in enumerate([10, 2, 1, 2, 10, 1])]
    dataset = load_dataset(str(write_csv(tmp_path / "numbers.csv", rows)))
    assert dataset.label_names == ["1", "2", "10"]
    assert dataset.labels == [2, 1, 0, 1, 2, 0]


def test_a_missing_column_names_the_columns_present_and_the_flag(tmp_path):
    rows = [{"body": row["text"], "label": row["label"]} for row in ROWS]
    path = write_csv(tmp_path / "news.csv", rows)
    with pytest.raises(ValueError) as info:
        load_dataset(str(path))
    message = str(info.value)
    assert "'text'" in message and "body" in message and "label" in message and "--text-column" in message
    with pytest.raises(ValueError, match="--label-column"):
        load_dataset(str(path), text_column="body", label_column="topic")


def test_a_missing_label_is_a_clear_error(tmp_path):
    rows = [dict(row) for row in ROWS]
    rows[3]["label"] = ""
    with pytest.raises(ValueError, match="example 4 has no label"):
        load_dataset(str(write_csv(tmp_path / "news.csv", rows)))
    jsonl = tmp_path / "news.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": row["text"]} if i == 2 else row) for i, row in enumerate(ROWS)))
    with pytest.raises(ValueError, match="example 3 has no label"):
        load_dataset(str(jsonl))


@pytest.mark.parametrize("name, content", [("empty.csv", ""), ("header.csv", "text,label\n"),
                                           ("empty.jsonl", ""), ("blank.jsonl", "\n\n")])
def test_an_empty_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match="no examples"):
        load_dataset(str(path))


def test_one_class_only_is_an_error(tmp_path):
    rows = [{"text": row["text"], "label": "business"} for row in ROWS]
    with pytest.raises(ValueError, match="at least two classes"):
        load_dataset(str(write_csv(tmp_path / "one.csv", rows)))


def test_broken_and_unsupported_files_are_errors(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset(str(broken))
    other = tmp_path / "news.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_dataset(str(other))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(str(tmp_path / "missing.csv"))


# -- batches ---------------------------------------------------------------------------
def test_text_batches_truncate_and_carry_labels(minilm_tokenizer):
    dataset = numbered({"a": 3, "b": 3}).subset(range(6))
    long = LabelledData([text + " word" * 100 for text in dataset.examples], dataset.labels, dataset.label_names)
    batches = text_batches(long, minilm_tokenizer, 4, max_length=16, shuffle=False, seed=0)
    first = next(iter(batches))
    assert first["input_ids"].shape == (4, 16)
    assert first["labels"].tolist() == [0, 0, 0, 1]
    assert len(batches) == 2


def test_max_length_beyond_the_model_maximum_is_a_clear_error(minilm_tokenizer):
    assert minilm_tokenizer.model_max_length == 512
    with pytest.raises(ValueError, match="--max-length 1000 exceeds the model's maximum of 512"):
        text_batches(numbered({"a": 2, "b": 2}), minilm_tokenizer, 2, max_length=1000, shuffle=False, seed=0)


def test_generation_batches_mask_everything_but_the_answer(minilm_tokenizer):
    tokenizer = minilm_tokenizer
    tokenizer_eos = tokenizer.sep_token_id  # BERT has no end-of-sequence token: stand one in
    gen = load_dataset("bbc-gen").subset([0, 700, 1500, 2000])

    class WithEos:  # the MiniLM tokenizer, plus an end-of-sequence token as a causal LM has
        eos_token_id = tokenizer_eos
        pad_token_id = tokenizer.pad_token_id
        model_max_length = tokenizer.model_max_length

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

    batches = generation_batches(gen, WithEos(), 4, max_length=32, shuffle=False, seed=0)
    batch = next(iter(batches))
    assert batch["input_ids"].shape[1] <= 32
    for row, answer in enumerate(gen.answers):
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer_eos]
        labels, ids, mask = batch["labels"][row], batch["input_ids"][row], batch["attention_mask"][row]
        supervised = (labels != -100).nonzero().flatten()
        assert labels[supervised].tolist() == answer_ids  # the answer and the end token, nothing else
        assert supervised.tolist() == list(range(int(supervised[0]), int(supervised[0]) + len(answer_ids)))
        assert ids[supervised].tolist() == answer_ids  # labels line up with the inputs (the model shifts)
        length = int(mask.sum())
        assert int(supervised[-1]) == length - 1  # the answer ends the sequence; padding follows
        assert (labels[length:] == -100).all() and (ids[length:] == tokenizer.pad_token_id).all()
        # the prompt kept its end ("Topic:") right before the answer, its beginning was cut
        prompt_tail = tokenizer.decode(ids[: int(supervised[0])][-4:], skip_special_tokens=True)
        assert prompt_tail.lower().replace(" ", "").endswith("topic:")


def test_generation_batches_refuse_a_too_long_max_length(minilm_tokenizer):
    gen = load_dataset("bbc-gen").subset([0, 1])
    with pytest.raises(ValueError, match="exceeds the model's maximum"):
        generation_batches(gen, minilm_tokenizer, 2, max_length=4096, shuffle=False, seed=0)


def test_image_batches_scale_and_resize():
    images = torch.tensor([[[[0, 255], [127, 127]]]], dtype=torch.uint8).repeat(2, 1, 1, 1)
    dataset = LabelledData(images, [0, 1], ["zero", "one"], "image", "tiny")
    batch = next(iter(data_lib.image_batches(dataset, 2, shuffle=False, seed=0)))
    assert batch["pixel_values"].shape == (2, 3, data_lib.IMAGE_SIZE, data_lib.IMAGE_SIZE)
    assert float(batch["pixel_values"].min()) >= -127 / 128 - 1e-6
    assert float(batch["pixel_values"].max()) <= 128 / 128 + 1e-6
    with pytest.raises(ValueError, match="not images"):
        data_lib.image_batches(numbered({"a": 1, "b": 1}), 2, shuffle=False, seed=0)
