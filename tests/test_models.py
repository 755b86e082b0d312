"""Base models the CLI loads: the packaged ones by name, and any local Hugging Face folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partial_lora.models import load_model, packaged_minilm_folder
from partial_lora.models.efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0


@pytest.fixture(scope="module")
def imagenet_effnet():
    model, tokenizer = load_model("efficientnet-lite0", task="image-classification", num_labels=None)
    assert tokenizer is None
    return model


def test_efficientnet_gets_a_new_head_for_other_class_counts():
    model, tokenizer = load_model("efficientnet-lite0", task="image-classification", num_labels=10)
    assert tokenizer is None
    assert isinstance(model, EfficientNetLite0)
    assert model.partial_lora_new_modules == ["_fc"]
    assert model._fc.out_features == 10 and model._fc.in_features == 1280
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        output = model(pixels, labels=labels)
    assert output.logits.shape == (2, 10)
    assert output.loss is not None and output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert torch.allclose(output.loss, F.cross_entropy(output.logits, labels))
    assert model(pixels).loss is None
    # the new head is seeded: two loads agree
    again, _ = load_model("efficientnet-lite0", task="image-classification", num_labels=10)
    assert torch.equal(again._fc.weight, model._fc.weight)


def test_efficientnet_imagenet_head_sees_a_daisy(imagenet_effnet):
    from sklearn.datasets import load_sample_image

    assert imagenet_effnet.partial_lora_new_modules == []
    assert imagenet_effnet._fc.out_features == 1000
    image = torch.from_numpy(np.array(load_sample_image("flower.jpg"))).permute(2, 0, 1)[None].float()
    pixels = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = imagenet_effnet((pixels - 127.0) / 128.0).logits
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == 985  # ImageNet class 985: daisy


def test_efficientnet_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state dict"):
        load_efficientnet_lite0(weights=path)


def test_efficientnet_is_only_an_image_classifier():
    with pytest.raises(ValueError, match="image classifier"):
        load_model("efficientnet-lite0", task="classification", num_labels=3)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="task="):
        load_model("minilm", task="translation")


def test_minilm_loads_with_a_new_classifier():
    model, tokenizer = load_model("minilm", task="classification", num_labels=5)
    assert model.partial_lora_new_modules == ["classifier"]
    assert model.classifier.out_features == 5
    assert not model.training
    encoded = tokenizer(["markets rallied", "the striker scored"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**encoded).logits
    assert logits.shape == (2, 5)
    # the encoder is pretrained (not re-initialised): its query weights match the packaged file
    from safetensors.torch import load_file

    files = sorted(packaged_minilm_folder().glob("*.safetensors"))
    if files:
        stored = load_file(str(files[0]))
        key = next(k for k in stored if k.endswith("encoder.layer.0.attention.self.query.weight"))
        assert torch.equal(stored[key], model.bert.encoder.layer[0].attention.self.query.weight)


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory):
    """A local Hugging Face folder: a tiny random BERT classifier plus the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_folder())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_a_local_folder_loads_with_its_own_head(tiny_bert_folder):
    folder, original = tiny_bert_folder
    model, tokenizer = load_model(str(folder), task="classification", num_labels=3)
    assert model.partial_lora_new_modules == []  # the head came with the folder
    encoded = tokenizer(["a short text", "another one"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(model(**encoded).logits, original(**encoded).logits, atol=1e-6)


def test_a_local_folder_gets_a_new_head_for_other_class_counts(tiny_bert_folder):
    folder, _ = tiny_bert_folder
    model, _ = load_model(str(folder), task="classification", num_labels=5)
    assert model.classifier.out_features == 5
    assert model.partial_lora_new_modules == ["classifier"]


@pytest.mark.parametrize("name", ["missing-model", "./missing/model"])
def test_a_missing_model_path_is_a_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--model"):
        load_model(name, task="classification", num_labels=2)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_model(str(tmp_path / "nowhere" / "model"), task="classification", num_labels=2)


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises((FileNotFoundError, ValueError), match=r"--model .*cannot load it"):
        load_model(str(tmp_path), task="classification", num_labels=2)
    (tmp_path / "config.json").write_text("{}")  # a config that names no architecture
    with pytest.raises(ValueError, match=r"--model .*cannot load it"):
        load_model(str(tmp_path), task="classification", num_labels=2)
