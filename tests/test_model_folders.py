"""``--model <folder>``: only a new head is ever initialised; anything else that does not fit,
a damaged weights file, or a missing tokenizer is an error naming the problem and the fix.

Every folder is a tiny randomly initialised model written with ``save_pretrained``, then
changed the way a user's folder goes wrong (an edited ``config.json``, a file copied in part,
tokenizer files left behind).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from partial_lora.files import DamagedFileError
from partial_lora.models import ModelFileError, load_model
from partial_lora.models.efficientnet_lite import load_efficientnet_lite0

from conftest import tiny_bert, tiny_llama

WORDS = ["the", "market", "rallied", "striker", "scored", "a", "short", "text"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS] + [f"w{i}" for i in range(100 - 5 - len(WORDS))]


def small_tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCAB)})


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    tiny_bert().save_pretrained(folder)
    small_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def folder(bert_folder, tmp_path):
    """A private copy of the tiny BERT folder, to damage."""
    return shutil.copytree(bert_folder, tmp_path / "model")


def edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_folder_with_its_own_tokenizer_loads_and_tokenizes_words(folder):
    model, tokenizer = load_model(str(folder), task="classification", num_labels=3)
    assert model.partial_lora_new_modules == []
    ids = tokenizer("the striker scored")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       tiny_bert().bert.encoder.layer[0].attention.self.query.weight)


def test_a_config_whose_sizes_do_not_match_the_weights_is_refused(folder):
    edit_config(folder, intermediate_size=128)
    with pytest.raises(ModelFileError, match=r"config\.json does not describe the saved weights .*"
                                             r"intermediate\.dense\.weight is \[64, 32\] in the files, \[128, 32\]"):
        load_model(str(folder), task="classification", num_labels=3)
    with pytest.raises(ModelFileError, match="config.json does not describe"):  # with a new head as well
        load_model(str(folder), task="classification", num_labels=5)


def test_weights_missing_from_the_files_are_refused(folder):
    edit_config(folder, num_hidden_layers=3)  # layer 2 has no weights
    with pytest.raises(ModelFileError, match=r"lack bert\.encoder\.layer\.2\..* and \d+ more"):
        load_model(str(folder), task="classification", num_labels=3)


def test_only_the_head_and_the_pooler_may_be_new(folder):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    kept = {k: v for k, v in tensors.items() if not k.startswith(("classifier.", "bert.pooler."))}
    save_file(kept, path, metadata={"format": "pt"})  # an encoder saved without pooler or head
    model, _ = load_model(str(folder), task="classification", num_labels=4)
    assert model.partial_lora_new_modules == ["bert.pooler.dense", "classifier"]
    save_file({k: v for k, v in kept.items() if "embeddings.word_embeddings" not in k}, path,
              metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match=r"lack bert\.embeddings\.word_embeddings\.weight"):
        load_model(str(folder), task="classification", num_labels=4)


def test_a_causal_lm_whose_config_does_not_match_is_refused(tmp_path):
    folder = tmp_path / "llama"
    tiny_llama().save_pretrained(folder)
    small_tokenizer().save_pretrained(folder)
    model, _ = load_model(str(folder), task="causal-lm")
    assert model.partial_lora_new_modules == []
    edit_config(folder, intermediate_size=80)
    with pytest.raises(ModelFileError, match=r"mlp\.\w+_proj\.weight is"):
        load_model(str(folder), task="causal-lm")


def test_a_folder_without_tokenizer_files_is_refused(folder):
    for path in folder.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            path.unlink()
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer \(none of tokenizer\.json, vocab\.txt"):
        load_model(str(folder), task="classification", num_labels=3)


def test_a_tokenizer_that_knows_no_words_is_refused(folder):
    from transformers import BertTokenizerFast

    for path in folder.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            path.unlink()
    BertTokenizerFast().save_pretrained(folder)  # no vocabulary: every word becomes [UNK]
    with pytest.raises(FileNotFoundError, match="knows no words"):
        load_model(str(folder), task="classification", num_labels=3)


@pytest.mark.parametrize("damage", ["truncated", "header", "empty"])
def test_a_damaged_weights_file_names_the_file_and_the_fix(folder, damage):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "header": b"\xff" * 8 + data[8:], "empty": b""}[damage])
    with pytest.raises(ModelFileError, match=r"model\.safetensors is not a readable safetensors file .*save it again") \
            as info:
        load_model(str(folder), task="classification", num_labels=3)
    assert isinstance(info.value, DamagedFileError) and isinstance(info.value, ValueError)  # the CLI: exit 2


def test_a_damaged_config_names_the_file(folder):
    (folder / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(ModelFileError, match=r"config\.json is not valid JSON"):
        load_model(str(folder), task="classification", num_labels=3)


def test_damaged_efficientnet_weights_are_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"weight": torch.zeros(2, 2)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelFileError, match="weights.pth is damaged"):
        load_efficientnet_lite0(weights=path)
    from partial_lora.models.efficientnet_lite import EfficientNetLite0

    state = EfficientNetLite0().state_dict()
    key = next(k for k in state if k.endswith("weight"))
    state[key] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state dict.*has shape"):
        load_efficientnet_lite0(weights=path)


@pytest.mark.parametrize("damage", ["truncated weights", "edited config", "no tokenizer"])
def test_the_cli_reports_a_bad_model_folder_with_exit_2(folder, tmp_path, damage, capsys):
    from partial_lora.cli import main

    if damage == "truncated weights":
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "edited config":
        edit_config(folder, intermediate_size=128)
    else:
        for path in folder.iterdir():
            if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
                path.unlink()
    out = tmp_path / "out"
    argv = ["train", "--out", str(out), "--model", str(folder), "--train-per-class", "6", "--test-per-class", "2",
            "--epochs", "1", "--max-length", "16", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert {"truncated weights": "model.safetensors", "edited config": "config.json",
            "no tokenizer": "no tokenizer"}[damage] in err
