"""Any batch a user has: tuples, weighted tuples, Hugging Face dicts, a custom loss, no labels,
endless loaders. Each reading is checked against an independent reference (a hand-written
weighted mean, the exact Hessian from torch.autograd.functional.hessian, duplicated data)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import quantlens as ql
from quantlens import batches as qb
from quantlens.testing import model_unchanged


def _data(n=24, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), \
        torch.randint(0, classes, (n,), generator=g)


def _mlp(d=5, h=4, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, classes)).double().eval()


def _exact_hessian(model, loss_of_params):
    """Dense Hessian of ``loss_of_params(params_dict)`` by torch.autograd.functional."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def f(flat):
        parts = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        return loss_of_params(dict(zip(names, parts)))

    return torch.autograd.functional.hessian(f, flat0)


def _dense(op):
    return torch.stack([op.matvec(e) for e in torch.eye(op.n, dtype=op.dtype)], dim=1)


# ------------------------------------------------------------------------- weighted batches
def test_weighted_batches_give_the_weighted_mean_and_accuracy():
    x, y = _data()
    w = torch.rand(len(y), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = _mlp()
    ev = ql.evaluate(model, DataLoader(TensorDataset(x, y, w), batch_size=7))
    with torch.no_grad():
        out = model(x)
    per = F.cross_entropy(out, y, reduction="none")
    torch.testing.assert_close(ev.loss, float((w * per).sum() / w.sum()), rtol=1e-12, atol=0)
    hits = (out.argmax(1) == y).double()
    assert ev.accuracy == pytest.approx(float((w * hits).sum() / w.sum()), rel=1e-12)
    assert ev.n == pytest.approx(float(w.sum()))


def test_integer_weights_equal_duplicated_examples_in_the_hessian():
    x, y = _data(n=12)
    w = torch.tensor([1, 2, 0, 1, 3, 1, 1, 2, 1, 1, 0, 1], dtype=torch.float64)
    model = _mlp()
    weighted = ql.HessianOperator(model, DataLoader(TensorDataset(x, y, w), batch_size=5))
    reps = w.long()
    dup = ql.HessianOperator(model, DataLoader(
        TensorDataset(x.repeat_interleave(reps, 0), y.repeat_interleave(reps)), batch_size=4))
    torch.testing.assert_close(_dense(weighted), _dense(dup), rtol=1e-10, atol=1e-12)
    assert weighted.n_examples == dup.n_examples == float(w.sum())


def test_weighted_hessian_equals_exact_hessian():
    x, y = _data(n=10)
    w = torch.linspace(0.1, 2.0, 10, dtype=torch.float64)
    model = _mlp()
    op = ql.HessianOperator(model, DataLoader(TensorDataset(x, y, w), batch_size=4))

    def loss(params):
        out = torch.func.functional_call(model, params, (x,))
        return (F.cross_entropy(out, y, reduction="none") * w).sum() / w.sum()

    torch.testing.assert_close(_dense(op), _exact_hessian(model, loss), rtol=1e-9, atol=1e-12)


def test_weighted_batches_need_a_criterion_with_reduction():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y, torch.ones(len(y), dtype=torch.float64)),
                        batch_size=8)
    with pytest.raises(TypeError, match="reduction='none'"):
        ql.evaluate(_mlp(), loader, loss_fn=lambda out, t: F.cross_entropy(out, t))
    # a loss module works: its reduction is switched on a copy
    crit = nn.CrossEntropyLoss()
    assert ql.evaluate(_mlp(), loader, loss_fn=crit).loss == pytest.approx(
        ql.evaluate(_mlp(), DataLoader(TensorDataset(x, y), batch_size=8)).loss, rel=1e-12)
    assert crit.reduction == "mean"


# ------------------------------------------------------------------------- Hugging Face dicts
def _tiny_bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=12, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def _dict_loader(n=14, batch_size=5, labels=True):
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        row = {"input_ids": torch.randint(0, 40, (6,), generator=g),
               "attention_mask": torch.tensor([1, 1, 1, 1, 1, int(i % 2 == 0)])}
        if labels:
            row["labels"] = torch.tensor(i % 3)
        rows.append(row)
    return DataLoader(rows, batch_size=batch_size)


def test_hugging_face_dict_batches_use_the_models_own_loss():
    model = _tiny_bert()
    loader = _dict_loader()
    with model_unchanged(model):
        ev = ql.evaluate(model, loader)
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for b in loader:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            total += float(F.cross_entropy(logits, b["labels"])) * len(b["labels"])
            correct += int((logits.argmax(1) == b["labels"]).sum())
            n += len(b["labels"])
    assert ev.n == n == 14
    assert ev.loss == pytest.approx(total / n, rel=1e-6)
    assert ev.accuracy == correct / n


def test_hugging_face_hessian_equals_the_same_loss_written_as_a_batch_loss():
    model = _tiny_bert()
    loader = _dict_loader()

    def manual(m, b):
        out = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        return F.cross_entropy(out.logits, b["labels"])

    with model_unchanged(model):
        own = ql.HessianOperator(model, loader, params="classifier")
        hook = ql.HessianOperator(model, loader, params="classifier",
                                  loss_fn=ql.BatchLoss(manual))
        v = torch.randn(own.n, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(own.matvec(v), hook.matvec(v), rtol=1e-5, atol=1e-7)
        # the whole model: attention's fused kernel has no double backward; quantlens
        # routes second-order products through its differentiable form
        top = ql.top_eigenvalues(model, loader, tol=1e-3)
    assert top.eigenvalues[0] > 0


def test_hugging_face_landscape_and_sharpness_run_on_dicts():
    model = _tiny_bert()
    loader = _dict_loader()
    with model_unchanged(model):
        line = ql.loss_line(model, loader, ql.random_direction(model), steps=3, progress=False)
        sharp = ql.layer_sharpness(model, loader, layers=["classifier"], progress=False)
    assert line.loss[1] == pytest.approx(ql.evaluate(model, loader).loss, rel=1e-6)
    assert sharp.loc["classifier", "lambda_max"] > 0


def test_dict_without_labels_needs_a_label_free_loss():
    with pytest.raises(ValueError, match="no 'labels'"):
        ql.evaluate(_tiny_bert(), _dict_loader(labels=False))


def test_label_key_gets_a_clear_error():
    rows = [{"input_ids": torch.zeros(4, dtype=torch.long), "label": torch.tensor(0)}] * 3
    with pytest.raises(ValueError, match="'label'"):
        ql.evaluate(_tiny_bert(), DataLoader(rows, batch_size=2))


# ------------------------------------------------------------------------- label-free loss
def test_output_distance_is_zero_at_the_reference_and_its_hessian_is_gauss_newton():
    x, _ = _data(n=9)
    model = _mlp()
    reference = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(x), batch_size=4)  # inputs only: no labels
    op = ql.HessianOperator(model, loader, loss_fn=ql.output_distance(reference))
    assert op.loss == 0.0
    assert float(op.gradient().abs().max()) == 0.0
    # exact Hessian of mean_i mean_j (f(x_i)_j - g(x_i)_j)^2 at f = g: 2/(n d) J^T J
    with torch.no_grad():
        g = reference(x)

    def loss(params):
        f = torch.func.functional_call(model, params, (x,))
        return ((f - g) ** 2).mean()

    torch.testing.assert_close(_dense(op), _exact_hessian(model, loss), rtol=1e-9, atol=1e-12)
    assert ql.lanczos(op, 1).eigenvalues[0] > 0


def test_output_distance_of_a_quantized_encoder_is_positive_and_cosine_bounded():
    model = _tiny_bert()
    loader = _dict_loader(labels=False)
    encoder = model.bert
    q = ql.quantize_model(encoder, 3)
    with model_unchanged(encoder), model_unchanged(q):
        mse = ql.evaluate(q, loader, loss_fn=ql.output_distance(encoder))
        cos = ql.evaluate(q, loader, loss_fn=ql.output_distance(encoder, "cosine"))
    assert mse.loss > 0 and 0 < cos.loss < 2
    assert mse.accuracy != mse.accuracy  # nan: no labels, no accuracy
    with pytest.raises(ValueError, match="separate copy"):
        ql.evaluate(encoder, loader, loss_fn=ql.output_distance(encoder))


def test_output_distance_caches_reference_outputs_until_the_reference_changes():
    x, y = _data(n=12)
    reference, model = _mlp(), _mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    calls = []
    hook = reference.register_forward_hook(lambda *a: calls.append(1))
    loss = ql.output_distance(reference)
    first = ql.evaluate(model, loader, loss_fn=loss).loss
    assert ql.evaluate(model, loader, loss_fn=loss).loss == first and len(calls) == 3
    with torch.no_grad():
        next(reference.parameters()).mul_(2.0)  # an in-place change of the reference
    changed = ql.evaluate(model, loader, loss_fn=loss).loss
    hook.remove()
    assert len(calls) == 6 and changed != first
    with torch.no_grad():
        direct = sum(float(((model(bx) - reference(bx)) ** 2).mean()) * len(bx)
                     for bx, _ in loader) / 12
    assert changed == pytest.approx(direct, rel=1e-6)


def test_batch_loss_weight_is_used_in_the_mean():
    x, y = _data(n=10)
    model = _mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches of 4, 4, 2

    def per_batch(m, b):
        return F.cross_entropy(m(b[0]), b[1]), 1.0  # every batch counts once

    ev = ql.evaluate(model, loader, loss_fn=ql.BatchLoss(per_batch))
    with torch.no_grad():
        means = [float(F.cross_entropy(model(bx), by)) for bx, by in loader]
    assert ev.loss == pytest.approx(sum(means) / 3, rel=1e-12)


# ------------------------------------------------------------------------- bounded reading
class _Endless(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(5, generator=g, dtype=torch.float64), torch.tensor(1)


def test_endless_loader_needs_max_batches_and_stops_there():
    model = _mlp()
    loader = DataLoader(_Endless(), batch_size=4)
    for call in (lambda **k: ql.evaluate(model, loader, **k),
                 lambda **k: ql.HessianOperator(model, loader, **k),
                 lambda **k: ql.loss_line(model, loader, ql.random_direction(model), steps=3,
                                          progress=False, **k),
                 lambda **k: ql.fit(copy.deepcopy(model), loader, epochs=1, **k)):
        with pytest.raises(ValueError, match="max_batches"):
            call()
    first = list(itertools.islice(iter(loader), 3))
    finite = DataLoader(TensorDataset(torch.cat([b[0] for b in first]),
                                      torch.cat([b[1] for b in first])), batch_size=4)
    ev = ql.evaluate(model, loader, max_batches=3)
    assert ev.n == 12 and ev.loss == ql.evaluate(model, finite).loss
    op = ql.HessianOperator(model, loader, max_batches=3)
    assert op.n_examples == 12 and op.loss == ql.HessianOperator(model, finite).loss


def test_max_batches_bounds_a_sized_loader():
    x, y = _data(n=20)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    assert ql.evaluate(_mlp(), loader, max_batches=2).n == 8
    assert ql.evaluate(_mlp(), loader, max_batches=99).n == 20


def test_materialising_too_much_is_refused(monkeypatch):
    x, y = _data(n=20)
    monkeypatch.setattr(qb, "MAX_MATERIALIZED_BYTES", 500)
    with pytest.raises(ValueError, match="GiB of tensors.*max_batches"):
        ql.HessianOperator(_mlp(), DataLoader(TensorDataset(x, y), batch_size=4))
    # streaming evaluation keeps one batch at a time and is not limited
    assert ql.evaluate(_mlp(), DataLoader(TensorDataset(x, y), batch_size=4)).n == 20


def test_fit_reads_weighted_and_dict_batches():
    x, y = _data(n=16)
    model = _mlp()
    w = torch.ones(16, dtype=torch.float64)
    hist = ql.fit(model, DataLoader(TensorDataset(x, y, w), batch_size=8), epochs=2)
    model2 = _mlp()
    hist2 = ql.fit(model2, DataLoader(TensorDataset(x, y), batch_size=8), epochs=2)
    np.testing.assert_allclose(hist.train_loss.to_numpy(), hist2.train_loss.to_numpy(),
                               rtol=1e-9, atol=0)
    bert = _tiny_bert()
    h = ql.fit(bert, _dict_loader(), epochs=2, lr=1e-2)
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]


# ------------------------------------------------------------------------- tied weights
class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.emb(ids).mean(1))


def test_tied_weight_is_quantized_once():
    model = _Tied()
    w = model.emb.weight.detach()
    for spec in (ql.QuantSpec(3), ql.QuantSpec(3, symmetric=False, granularity="channel")):
        q = ql.quantize_model(model, spec)
        assert q.out.weight is q.emb.weight
        expected = ql.quantize_dequantize(w, spec)
        assert torch.equal(q.emb.weight, expected)
        report = ql.error_report(model, spec)
        assert report.loc["out", "mse"] == report.loc["emb", "mse"]
        assert report.loc["emb", "mse"] == pytest.approx(float(((expected - w) ** 2).mean()))
    with pytest.raises(ValueError, match="tied"):
        ql.quantize_model(model, {"emb": 4, "out": 8})
    with pytest.raises(ValueError, match="tied"):
        ql.prepare_qat(model, {"emb": 4, "out": 8})


def test_float64_fake_quant_differs_from_torch_only_by_the_float32_scale():
    w = torch.randn(64, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8, 16):
        spec = ql.QuantSpec(bits)
        scale, zp = ql.qparams(w, spec)
        ref = torch.fake_quantize_per_tensor_affine(w, float(scale[0]), int(zp[0]),
                                                    spec.qmin, spec.qmax)
        ours = ql.quantize_dequantize(w, spec)
        # codes agree; values differ by the float32 rounding of the scale (the README's claim)
        err = float((ours - ref).abs().max())
        assert err <= float(w.abs().max()) * 2**-23
        same = ql.quantize_dequantize(w.float(), spec)
        s32, z32 = ql.qparams(w.float(), spec)
        assert torch.equal(same, torch.fake_quantize_per_tensor_affine(
            w.float(), float(s32[0]), int(z32[0]), spec.qmin, spec.qmax))


def test_output_distance_on_minilm_matches_the_embedding_similarity_table():
    """The label-free loss on a real pretrained encoder with tokenizer dict batches equals
    1 - mean cosine of quantlens.alpha's independent sentence-embedding pipeline."""
    from transformers import DataCollatorWithPadding

    pre = ql.load_pretrained()
    sentences = ql.SENTENCES[:8]
    rows = [dict(pre.tokenizer(s, truncation=True, max_length=64)) for s in sentences]
    loader = DataLoader(rows, batch_size=8, collate_fn=DataCollatorWithPadding(pre.tokenizer))
    q = ql.quantize_model(pre.model, {n: 4 for n in ql.encoder_linear_layers(pre.model)})
    with model_unchanged(pre.model), model_unchanged(q):
        ev = ql.evaluate(q, loader, loss_fn=ql.output_distance(pre.model, "cosine"))
    table = ql.embedding_similarity(pre, bits=(4,), granularities=("tensor",),
                                    sentences=sentences, max_length=64, progress=False).table
    cos = float(table.loc[table.bits == 4, "cos_mean"].iloc[0])
    assert ev.n == 8 and 0.05 < ev.loss < 1
    assert ev.loss == pytest.approx(1 - cos, abs=1e-5)
