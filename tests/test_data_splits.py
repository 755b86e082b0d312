"""Train / validation / test: carved seeded, per class and disjoint, or used as a source gives them."""

from __future__ import annotations

from collections import Counter

import pytest

from partial_lora.data import LabelledData, Splits, load_dataset, load_splits, three_way_split
from conftest import numbered


def per_class(data: LabelledData) -> dict[str, int]:
    return dict(Counter(data.label_names[label] for label in data.labels))


def in_dataset_order(part: LabelledData, dataset: LabelledData) -> bool:
    position = {text: i for i, text in enumerate(dataset.examples)}
    return [position[text] for text in part.examples] == sorted(position[text] for text in part.examples)


# -- carving ---------------------------------------------------------------------------
def test_counts_per_class_give_disjoint_parts_in_dataset_order():
    dataset = numbered({"a": 50, "b": 30, "c": 20})
    splits = three_way_split(dataset, test=5, validation=3, seed=0)
    assert per_class(splits.test) == {"a": 5, "b": 5, "c": 5}
    assert per_class(splits.validation) == {"a": 3, "b": 3, "c": 3}
    assert per_class(splits.train) == {"a": 42, "b": 22, "c": 12}  # train=None keeps the rest
    parts = [set(splits.train.examples), set(splits.validation.examples), set(splits.test.examples)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert parts[0] | parts[1] | parts[2] == set(dataset.examples)
    for part in (splits.train, splits.validation, splits.test):
        assert in_dataset_order(part, dataset)
        assert all(text.split()[0] == part.label_names[label] for text, label in zip(part.examples, part.labels))
    assert splits.given == ()
    assert splits.class_counts()["test"] == {"a": 5, "b": 5, "c": 5}


def test_test_fraction_is_of_the_class_and_validation_fraction_of_the_training_pool():
    splits = three_way_split(numbered({"a": 50, "b": 30, "c": 20}), test=0.2, validation=0.25, seed=0)
    assert per_class(splits.test) == {"a": 10, "b": 6, "c": 4}
    assert per_class(splits.validation) == {"a": 10, "b": 6, "c": 4}  # a quarter of 40, 24, 16
    assert per_class(splits.train) == {"a": 30, "b": 18, "c": 12}


def test_the_same_seed_gives_the_same_parts_and_another_seed_others():
    dataset = numbered({"a": 40, "b": 40})
    first = three_way_split(dataset, test=8, validation=4, train=10, seed=3)
    again = three_way_split(dataset, test=8, validation=4, train=10, seed=3)
    other = three_way_split(dataset, test=8, validation=4, train=10, seed=4)
    for part in ("train", "validation", "test"):
        assert getattr(first, part).examples == getattr(again, part).examples
        assert getattr(first, part).examples != getattr(other, part).examples


def test_resizing_a_later_part_leaves_the_earlier_parts_unchanged():
    dataset = numbered({"a": 60, "b": 45})
    base = three_way_split(dataset, test=10, validation=5, train=10, seed=1)
    more_validation = three_way_split(dataset, test=10, validation=9, train=10, seed=1)
    more_train = three_way_split(dataset, test=10, validation=5, train=20, seed=1)
    assert more_validation.test.examples == base.test.examples
    assert set(base.validation.examples) < set(more_validation.validation.examples)
    assert more_train.test.examples == base.test.examples
    assert more_train.validation.examples == base.validation.examples
    assert set(base.train.examples) < set(more_train.train.examples)


def test_a_train_count_is_exact_and_a_train_cap_keeps_what_a_small_class_has():
    dataset = numbered({"big": 40, "small": 8})
    exact = three_way_split(dataset, test=2, validation=2, train=3, seed=0)
    assert per_class(exact.train) == {"big": 3, "small": 3}
    capped = three_way_split(dataset, test=2, validation=2, train_cap=10, seed=0)
    assert per_class(capped.train) == {"big": 10, "small": 4}
    fraction = three_way_split(dataset, test=2, validation=2, train=0.5, seed=0)
    assert per_class(fraction.train) == {"big": 18, "small": 2}


def test_a_class_too_small_for_the_parts_names_the_class_its_size_the_ask_and_the_options():
    with pytest.raises(ValueError) as info:
        three_way_split(numbered({"a": 20, "b": 5}), test=4, validation=1, seed=0)
    message = str(info.value)
    for words in ("'b'", "has 5 example(s)", "4 for testing (--test-per-class 4)",
                  "1 for validation (--validation-per-class 1)", "at least 1 for training",
                  "lower --test-per-class or --validation-per-class"):
        assert words in message, (words, message)
    with pytest.raises(ValueError) as info:
        three_way_split(numbered({"a": 20, "b": 3}), test=0.5, validation=0.2, seed=0)
    message = str(info.value)
    for words in ("'b'", "has 3 example(s)", "--test-fraction 0.5", "--validation-fraction 0.2"):
        assert words in message, (words, message)


def test_asking_more_training_examples_than_a_class_has_left_names_train_per_class():
    with pytest.raises(ValueError) as info:
        three_way_split(numbered({"a": 40, "b": 12}), test=4, validation=4, train=5, seed=0)
    message = str(info.value)
    assert "'b'" in message and "has 12" in message and "5 for training (--train-per-class 5)" in message
    assert "--train-per-class" in message.split("lower")[1]


def test_a_class_without_examples_is_an_error_naming_it():
    dataset = LabelledData([f"x {i}" for i in range(10)], [0] * 5 + [1] * 5, ["a", "b", "empty"], "text", "gap")
    with pytest.raises(ValueError, match="class 'empty' has no examples"):
        three_way_split(dataset, test=1, validation=1, seed=0)


@pytest.mark.parametrize("sizes, words", [
    (dict(test=0, validation=1), ["test=0", "--test-per-class", "--test-fraction"]),
    (dict(test=1.0, validation=1), ["test=1.0", "--test-fraction"]),
    (dict(test=1, validation=True), ["validation=True", "--validation-per-class"]),
    (dict(test=1, validation=-0.1), ["validation=-0.1", "--validation-fraction"]),
    (dict(test=1, validation=1, train=0), ["train=0", "--train-per-class"]),
    (dict(test=1, validation=1, train_cap=0), ["train_cap=0", "--train-per-class"]),
])
def test_invalid_sizes_name_the_option(sizes, words):
    with pytest.raises(ValueError) as info:
        three_way_split(numbered({"a": 10, "b": 10}), seed=0, **sizes)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_parts_must_share_their_label_names():
    one, other = numbered({"a": 2, "b": 2}), numbered({"a": 2, "c": 2})
    with pytest.raises(ValueError, match="share one list of label names"):
        Splits(one, one, other)


# -- packaged datasets -----------------------------------------------------------------
@pytest.mark.parametrize("name, test, validation, train, kind", [
    ("bbc", 200, 40, 80, "text"), ("mnist", 100, 30, 60, "image"), ("bbc-gen", 60, 12, 24, "generation")])
def test_packaged_datasets_allow_the_comparison_sizes(name, test, validation, train, kind):
    splits = load_splits(name, test=test, validation=validation, train=train, seed=0)
    classes = len(splits.label_names)
    assert (len(splits.test), len(splits.validation), len(splits.train)) == (
        test * classes, validation * classes, train * classes)
    assert splits.test.kind == kind and splits.given == ()
    if kind == "image":
        assert splits.test.examples.shape[0] == 1000
    else:
        assert not set(splits.test.examples) & set(splits.train.examples)
        assert not set(splits.test.examples) & set(splits.validation.examples)


def test_bbc_copies_are_left_out_and_its_smallest_distinct_class_bounds_the_sizes():
    splits = load_splits("bbc", test=200, validation=40, train=80, seed=0)
    assert splits.copies_left_out == 100  # 100 articles appear twice in BBC News
    with pytest.raises(ValueError) as info:
        load_splits("bbc", test=340, validation=10, seed=0)
    assert "class 'tech' has 347 distinct example(s) (401 with copies)" in str(info.value)


def test_identical_examples_never_land_in_two_parts():
    texts = [f"a {i}" for i in range(10)] + ["same"] * 3 + [f"b {i}" for i in range(10)] + ["same"]
    labels = [0] * 13 + [1] * 11
    dataset = LabelledData(texts, labels, ["a", "b"], "text", "copies")
    splits = three_way_split(dataset, test=3, validation=2, seed=0)
    everything = list(splits.train.examples) + list(splits.validation.examples) + list(splits.test.examples)
    assert everything.count("same") == 1 and len(everything) == len(set(everything)) == 21
    assert splits.copies_left_out == 3  # two copies in class a, one (with another label) in class b


# -- splits a datasets folder gives ----------------------------------------------------
def save_dict(folder, **splits: list[dict]):
    import datasets

    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
        str(folder))
    return str(folder)


def rows(prefix: str, counts: dict[str, int]) -> list[dict]:
    return [{"text": f"{prefix} {label} {i}", "label": label} for label, count in counts.items() for i in range(count)]


def test_given_validation_and_test_splits_are_used_as_given(tmp_path):
    given_test = rows("test", {"sport": 3, "business": 2})  # another first label than train
    folder = save_dict(tmp_path / "news", train=rows("train", {"business": 10, "sport": 10}),
                       validation=rows("val", {"sport": 2, "business": 2}), test=given_test)
    splits = load_splits(folder, test=1, validation=1, seed=0)
    assert splits.given == ("validation", "test")
    assert list(splits.test.examples) == [row["text"] for row in given_test]
    assert [splits.label_names[label] for label in splits.test.labels] == [row["label"] for row in given_test]
    assert splits.label_names == ["business", "sport"]
    assert len(splits.validation) == 4 and len(splits.train) == 20


def test_a_given_test_split_keeps_validation_carved_from_train_only(tmp_path):
    folder = save_dict(tmp_path / "news", train=rows("train", {"business": 10, "sport": 10}),
                       test=rows("test", {"business": 4, "sport": 4}))
    splits = load_splits(folder, test=1, validation=3, train_cap=5, seed=0)
    assert splits.given == ("test",)
    assert all(text.startswith("test") for text in splits.test.examples) and len(splits.test) == 8
    assert all(text.startswith("train") for text in splits.validation.examples + splits.train.examples)
    assert per_class(splits.validation) == {"business": 3, "sport": 3}
    assert per_class(splits.train) == {"business": 5, "sport": 5}
    assert not set(splits.validation.examples) & set(splits.train.examples)


def test_training_examples_identical_to_a_given_test_example_are_left_out(tmp_path):
    train = rows("train", {"a": 6, "b": 6}) + [{"text": "test a 0", "label": "a"}]
    folder = save_dict(tmp_path / "news", train=train, test=rows("test", {"a": 2, "b": 2}))
    splits = load_splits(folder, test=1, validation=2, seed=0)
    assert "test a 0" not in splits.train.examples + splits.validation.examples
    assert splits.copies_left_out == 1 and len(splits.train) + len(splits.validation) == 12


def test_loading_a_folder_with_given_splits_as_one_dataset_is_refused(tmp_path):
    folder = save_dict(tmp_path / "news", train=rows("train", {"a": 3, "b": 3}), test=rows("test", {"a": 1, "b": 1}))
    with pytest.raises(ValueError, match="defines its own splits .train, test.; load it with load_splits"):
        load_dataset(folder)


def test_a_folder_with_only_a_train_split_is_split_like_a_file(tmp_path):
    folder = save_dict(tmp_path / "news", train=rows("train", {"a": 6, "b": 6}))
    assert len(load_dataset(folder)) == 12
    splits = load_splits(folder, test=2, validation=1, seed=0)
    assert splits.given == () and per_class(splits.test) == {"a": 2, "b": 2}


def test_a_class_missing_from_a_given_split_names_the_split_and_the_class(tmp_path):
    folder = save_dict(tmp_path / "news", train=rows("train", {"a": 5, "b": 5, "c": 5}),
                       test=rows("test", {"a": 2, "b": 2}))
    with pytest.raises(ValueError, match=r"split 'test' has no example of class\(es\) \['c'\]"):
        load_splits(folder, test=1, validation=1, seed=0)


def test_unknown_split_names_and_a_missing_train_split_are_refused(tmp_path):
    dev = save_dict(tmp_path / "dev", train=rows("train", {"a": 3, "b": 3}), dev=rows("dev", {"a": 1, "b": 1}))
    with pytest.raises(ValueError, match=r"split\(s\) \['dev'\] are not train, validation or test"):
        load_splits(dev, test=1, validation=1, seed=0)
    no_train = save_dict(tmp_path / "no-train", validation=rows("v", {"a": 3, "b": 3}),
                         test=rows("t", {"a": 3, "b": 3}))
    with pytest.raises(ValueError, match="no 'train' split"):
        load_splits(no_train, test=1, validation=1, seed=0)


def test_class_label_names_and_order_are_kept_and_minus_one_is_a_missing_label(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["world", "sport", "arts"])})
    labelled = [{"text": f"t {i}", "label": i % 2} for i in range(8)]
    datasets.Dataset.from_list(labelled, features=features).save_to_disk(str(tmp_path / "named"))
    data = load_dataset(str(tmp_path / "named"))
    assert data.label_names == ["world", "sport"]  # the ClassLabel's order, unused names left out
    assert data.labels == [0, 1] * 4
    unlabelled = labelled + [{"text": "no label", "label": -1}]
    datasets.Dataset.from_list(unlabelled, features=features).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(ValueError, match=r"example 9 has no label \(-1"):
        load_dataset(str(tmp_path / "unlabelled"))


def test_a_file_is_split_by_three_way_split(tmp_path):
    from conftest import write_csv

    path = str(write_csv(tmp_path / "news.csv", rows("x", {"a": 8, "b": 8})))
    splits = load_splits(path, test=2, validation=0.5, seed=5)
    same = three_way_split(load_dataset(path), test=2, validation=0.5, seed=5)
    assert splits == same
