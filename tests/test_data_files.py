"""User files are read exactly as written, or refused naming the line, the value and the fix."""

from __future__ import annotations

import json

import pytest

from partial_lora.data import load_dataset
from conftest import write_csv


def jsonl(tmp_path, *lines: str, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def objects(*pairs) -> list[str]:
    """JSON Lines of ``{"text": ..., "label": ...}`` for ``(text, label)`` pairs."""
    return [json.dumps({"text": text, "label": label}) for text, label in pairs]


def refusal(path: str, **options) -> str:
    with pytest.raises(ValueError) as info:
        load_dataset(path, **options)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# -- labels ----------------------------------------------------------------------------
def test_the_number_1_and_the_text_1_are_not_silently_merged(tmp_path):
    message = refusal(jsonl(tmp_path, *objects(("x", 1), ("y", "1"), ("z", 2))))
    assert "mixes number and text labels" in message
    assert "example 1 (line 1) has 1" in message and "example 2 (line 2) has '1'" in message


def test_a_whole_float_is_the_same_class_as_the_integer(tmp_path):
    data = load_dataset(jsonl(tmp_path, *objects(("x", 1), ("y", 1.0), ("z", 2), ("w", 2.0))))
    assert data.label_names == ["1", "2"]
    assert data.labels == [0, 0, 1, 1]


def test_a_fractional_number_as_label_is_refused_naming_the_example(tmp_path):
    message = refusal(jsonl(tmp_path, *objects(("x", 1), ("y", 1.5))))
    assert "example 2 has the label 1.5 in column 'label' (line 2), which is not a whole number" in message


@pytest.mark.parametrize("label, words", [
    ([1, 2], "example 2 has a list as its label ([1, 2])"),
    ({"name": "sport"}, "example 2 has a object as its label ({'name': 'sport'})"),
    (None, "example 2 has no label"),
    (float("nan"), "example 2 has no label (NaN)"),
])
def test_lists_objects_none_and_nan_labels_are_refused_naming_the_example(tmp_path, label, words):
    message = refusal(jsonl(tmp_path, *objects(("x", "a"), ("y", label), ("z", "b"))))
    assert words in message and "column 'label' (line 2)" in message


def test_true_false_labels_are_a_kind_of_their_own(tmp_path):
    data = load_dataset(jsonl(tmp_path, *objects(("x", True), ("y", False), ("z", True))))
    assert data.label_names == ["false", "true"] and data.labels == [1, 0, 1]
    message = refusal(jsonl(tmp_path, *objects(("x", True), ("y", 1), ("z", 0)), name="mixed.jsonl"))
    assert "mixes true/false and number labels" in message  # True == 1 in Python: never merged


def test_csv_labels_are_texts_and_different_spellings_of_one_number_are_refused(tmp_path):
    rows = [{"text": f"t {i}", "label": label} for i, label in enumerate(["1", "2", "01", "2"])]
    message = refusal(str(write_csv(tmp_path / "zero.csv", rows)))
    assert "'1' (example 1, line 2) and '01' (example 3, line 4) spell the same number differently" in message
    rows[2]["label"] = "1.0"
    assert "'1' (example 1, line 2) and '1.0' (example 3, line 4)" in refusal(str(write_csv(tmp_path / "f.csv", rows)))


def test_csv_labels_that_differ_only_by_surrounding_spaces_are_one_class(tmp_path):
    rows = [{"text": f"t {i}", "label": label} for i, label in enumerate(["sport", " sport ", "arts"])]
    data = load_dataset(str(write_csv(tmp_path / "spaces.csv", rows)))
    assert data.label_names == ["arts", "sport"] and data.labels == [1, 1, 0]


def test_a_missing_csv_label_names_the_example_and_its_line(tmp_path):
    rows = [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(5)]
    rows[3]["label"] = " "
    message = refusal(str(write_csv(tmp_path / "gap.csv", rows)))
    assert "example 4 has no label in column 'label' (line 5); every example needs one" in message


# -- texts -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [(5, "a number (5)"), (["a", "b"], "a list (['a', 'b'])"),
                                         (True, "a true/false value (True)")])
def test_a_text_that_is_not_a_string_is_refused_naming_the_row(tmp_path, text, words):
    message = refusal(jsonl(tmp_path, *objects(("x", "a"), ("y", "b")), json.dumps({"text": text, "label": "a"})))
    assert f"example 3 has {words}, not a text, in column 'text' (line 3)" in message


# -- CSV -------------------------------------------------------------------------------
def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_text("text,label\nfirst,a\nsecond,b\n", encoding="utf-8-sig")
    data = load_dataset(str(path))
    assert list(data.examples) == ["first", "second"]


def test_a_csv_record_with_the_wrong_number_of_fields_names_its_line(tmp_path):
    path = tmp_path / "fields.csv"
    path.write_text('text,label\n"two\nlines",a\n\nok,b\nan, unquoted comma,a\n', encoding="utf-8")
    message = refusal(str(path))
    assert "line 6 has 3 field(s) but the header has 2 (text, label)" in message and "double quotes" in message


def test_bad_csv_quoting_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "quotes.csv"
    path.write_text('text,label\nfine,a\n"closed" then more,b\n', encoding="utf-8")
    assert "line 3 is not valid CSV" in refusal(str(path))


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("text,label,text\na,x,b\n", encoding="utf-8")
    assert "names column(s) ['text'] more than once" in refusal(str(path))


def test_crlf_csv_with_quoted_line_breaks_loads(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes(b'text,label\r\n"one\r\ntwo",a\r\nthree,b\r\n')
    data = load_dataset(str(path))
    assert list(data.examples) == ["one\r\ntwo", "three"] and data.label_names == ["a", "b"]


def test_text_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    message = refusal(str(path))
    assert "cannot read it: line 3 is not UTF-8 text (byte 0xe9); save the file as UTF-8" in message


# -- JSON Lines and JSON ---------------------------------------------------------------
def test_a_broken_jsonl_line_is_reported_at_its_line_in_the_file(tmp_path):
    path = jsonl(tmp_path, objects(("x", "a"))[0], "", "   ", '{"text": "y", "label": ', objects(("z", "b"))[0])
    message = refusal(path)
    assert "cannot read it: line 4 is not valid JSON" in message and "one JSON object per line" in message


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"just text"', "text"), ("3", "number"),
                                        ("null", "null"), ("true", "true/false value")])
def test_a_jsonl_line_that_is_json_but_not_an_object_is_refused(tmp_path, line, kind):
    message = refusal(jsonl(tmp_path, *objects(("x", "a"), ("y", "b")), line))
    assert f"line 3 holds a {kind}" in message and "not a JSON object" in message


def test_jsonl_lines_are_split_at_newlines_only(tmp_path):
    separator = "\u2028"  # a valid character inside a JSON string; str.splitlines() would cut there
    path = jsonl(tmp_path, json.dumps({"text": f"one{separator}two", "label": "a"}, ensure_ascii=False),
                 *objects(("three", "b")))
    data = load_dataset(path)
    assert list(data.examples) == [f"one{separator}two", "three"]


def test_jsonl_with_crlf_and_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(("\r\n".join(objects(("x", "a"), ("y", "b"))) + "\r\n").encode("utf-8-sig"))
    assert list(load_dataset(str(path)).examples) == ["x", "y"]


def test_deeply_nested_or_oversized_json_is_refused_not_a_crash(tmp_path):
    deep = jsonl(tmp_path, *objects(("x", "a"), ("y", "b")), "[" * 100_000, name="deep.jsonl")
    assert "line 3 is not valid JSON (nested too deeply)" in refusal(deep)
    digits = jsonl(tmp_path, *objects(("x", "a")), '{"text": "y", "label": ' + "9" * 5000 + "}", name="big.jsonl")
    assert "line 2 is not valid JSON" in refusal(digits)


def test_a_json_object_naming_a_key_twice_is_refused(tmp_path):
    path = jsonl(tmp_path, *objects(("x", "a")), '{"text": "y", "label": "a", "label": "b"}')
    assert "line 2 is not valid JSON (an object names ['label'] more than once)" in refusal(path)


def test_a_json_file_with_one_object_says_to_write_a_list(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"text": ["x", "y"], "label": ["a", "b"]}, indent=2))
    assert "holds one JSON object; write a list of objects" in refusal(str(path))


def test_a_csv_field_longer_than_128_kib_loads(tmp_path):
    long = "word " * 40_000
    rows = [{"text": long, "label": "a"}, {"text": "b", "label": "b"}]
    data = load_dataset(str(write_csv(tmp_path / "long.csv", rows)))
    assert data.examples[0] == long


def test_a_json_list_whose_items_are_not_objects_is_refused_naming_the_item(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"text": "x", "label": "a"}, 7, {"text": "y", "label": "b"}]), encoding="utf-8")
    assert "item 2 of the JSON list is a number (7), not an object" in refusal(str(path))


def test_a_json_list_loads_and_a_broken_one_names_line_and_column(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}], indent=1))
    assert list(load_dataset(str(path)).examples) == ["x", "y"]
    path.write_text('[\n {"text": "x", "label": "a"},\n {"text": "y" "label": "b"}\n]')
    assert "cannot read it: not valid JSON (Expecting ',' delimiter at line 3, column 15)" in refusal(str(path))


def test_label_problems_in_a_json_list_name_the_item(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"text": "x", "label": "a"}, {"text": "y", "label": ["a"]}]))
    assert "example 2 has a list as its label (['a']) in column 'label' (item 2)" in refusal(str(path))


# -- datasets folders ------------------------------------------------------------------
def test_a_folder_that_is_not_a_saved_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    assert "cannot read it as a folder written by datasets.save_to_disk" in refusal(str(tmp_path / "plain"))


def test_problems_in_a_saved_split_name_the_split_and_row(tmp_path):
    import datasets

    train = [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(4)]
    test = [{"text": "u 0", "label": "a"}, {"text": "", "label": "b"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "saved"))
    from partial_lora.data import load_splits

    with pytest.raises(ValueError, match=r"example 2 has no text in column 'text' \(split 'test', row 2\)"):
        load_splits(str(tmp_path / "saved"), test=1, validation=1, seed=0)
