"""Embedded data, reference models, training helper and pretrained loader."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens.testing import assert_model_unchanged


def test_digits_split_is_deterministic_and_stratified():
    a, b = ql.load_digits_split(), ql.load_digits_split()
    assert (len(a.y_train), len(a.y_test)) == (1347, 450)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert a.x_train.shape[1:] == (1, 8, 8) and 0 <= float(a.x_train.min()) <= 1
    test_counts = torch.bincount(a.y_test, minlength=10).double()
    all_counts = test_counts + torch.bincount(a.y_train, minlength=10)
    assert float((test_counts - 0.25 * all_counts).abs().max()) <= 1  # stratified
    assert not torch.equal(ql.load_digits_split(seed=1).y_test, a.y_test)


def test_loaders_and_bad_arguments():
    train, test = ql.digits_loaders(batch_size=100)
    assert sum(len(y) for _, y in train) == 1347 and sum(len(y) for _, y in test) == 450
    with pytest.raises(ValueError, match="batch_size"):
        ql.digits_loaders(batch_size=0)
    with pytest.raises(ValueError, match="test_size"):
        ql.load_digits_split(test_size=1.5)
    sub, _ = ql.digits_loaders(batch_size=100, n_train=256, shuffle_train=False)
    full = ql.load_digits_split()
    xs = torch.cat([x for x, _ in sub])
    assert xs.shape[0] == 256 and torch.equal(xs, full.x_train[:256])
    for bad in (0, 1348, 2.0, True):
        with pytest.raises(ValueError, match="n_train"):
            ql.digits_loaders(n_train=bad)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_models_shapes_and_quantizable_layers(name):
    model = ql.make_model(name)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert len(ql.quantizable_layers(model)) >= 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(),
                                                  ql.make_model(name).parameters()))
    with pytest.raises(ValueError, match="name"):
        ql.make_model("resnet")


@pytest.mark.parametrize("name,minimum", [("mlp", 0.95), ("cnn", 0.97), ("transformer", 0.95)])
def test_trained_models_reach_stated_accuracy(name, minimum):
    model, history = ql.trained_digits_model(name)
    assert history.test_accuracy.iloc[-1] >= minimum
    _, test = ql.digits_loaders()
    ev = ql.evaluate(model, test)
    assert ev.accuracy == history.test_accuracy.iloc[-1] and ev.n == 450


def test_evaluate_leaves_model_and_accepts_any_loader():
    model, _ = ql.trained_digits_model("cnn")
    model.train()
    loader = DataLoader(TensorDataset(torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))),
                        batch_size=7)
    ev = assert_model_unchanged(model, ql.evaluate, model, loader)
    assert ev.n == 20
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="loader is empty"):
        assert_model_unchanged(model, ql.evaluate, model, empty)
    with pytest.raises(TypeError, match="loader"):
        ql.evaluate(model, [(torch.zeros(1, 1, 8, 8), torch.zeros(1))])


def test_fit_is_seeded_and_checks_arguments():
    train, _ = ql.digits_loaders()
    a, b = ql.make_model("mlp"), ql.make_model("mlp")
    ha, hb = ql.fit(a, train, epochs=2), ql.fit(b, train, epochs=2)  # same loader object
    assert ha.equals(hb)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="epochs"):
        ql.fit(a, train, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        ql.fit(a, train, lr=-1.0)


def test_quantization_sweep_leaves_model():
    model, _ = ql.trained_digits_model("mlp")
    _, test = ql.digits_loaders()
    df = assert_model_unchanged(model, ql.quantization_sweep, model, test, bits=(8, 2),
                                granularities=("tensor",), progress=False)
    assert list(df.bits) == [32, 8, 2]
    assert df.accuracy.iloc[1] > 0.9 and df.accuracy.iloc[2] < df.accuracy.iloc[1]


def test_load_embedded_minilm():
    pre = ql.load_pretrained()
    assert pre.model.config.model_type == "bert" and pre.tokenizer is not None
    assert sum(p.numel() for p in pre.model.parameters()) == 22_713_216
    assert not pre.model.training
    layers = ql.quantizable_layers(pre.model)
    assert "encoder.layer.0.intermediate.dense" in layers
    assert len(layers) == 40  # 36 Linear in 6 blocks, 3 Embedding, the pooler


def test_load_any_local_hf_folder(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)
    BertModel(cfg).save_pretrained(tmp_path)
    pre = ql.load_pretrained(tmp_path)
    assert pre.tokenizer is None and pre.model.config.hidden_size == 16
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ql.load_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        ql.load_pretrained(tmp_path / "empty")
