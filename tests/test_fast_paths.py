"""The fast paths agree with the plain ones: fused output-layer loss, flat gradients, encoder-only steps, IW chunks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lagvae.config import ModelConfig
from lagvae.data.text import PAD_ID
from lagvae.metrics import MAX_CHUNK_VALUES, samples_per_chunk
from lagvae.models import build_model, linear_ce
from lagvae.models.linear_ce import dropout, linear_cross_entropy, twice_differentiable
from lagvae.training.aggressive import AggressiveStrategy
from lagvae.training.flat_grads import FlatGrads
from lagvae.training.strategies import JointStrategy


def _inputs(n: int = 37, h: int = 6, v: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64) * 2
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64)
    target = torch.randint(0, v, (n,), generator=gen)
    target[::5] = PAD_ID
    return hidden, weight, target


@pytest.mark.parametrize("chunk_logits", [1, 40, 1 << 19])  # one row per chunk, ragged chunks, one chunk
def test_linear_cross_entropy_matches_cross_entropy_and_its_gradients(monkeypatch, chunk_logits):
    monkeypatch.setattr(linear_ce, "CHUNK_LOGITS", chunk_logits)
    h, w, y = _inputs()
    upstream = torch.rand(h.shape[0], dtype=torch.float64)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    fused = linear_cross_entropy(h1, w1, y, PAD_ID)
    (fused * upstream).sum().backward()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    plain = F.cross_entropy(h2 @ w2.T, y, ignore_index=PAD_ID, reduction="none")
    (plain * upstream).sum().backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(h1.grad, h2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)
    assert torch.all(fused[y == PAD_ID] == 0)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, y, PAD_ID), plain.detach())


def test_linear_cross_entropy_skips_the_weight_gradient_when_not_needed():
    h, w, y = _inputs()
    h1 = h.clone().requires_grad_()
    linear_cross_entropy(h1, w, y, PAD_ID).sum().backward()
    h2 = h.clone().requires_grad_()
    F.cross_entropy(h2 @ w.T, y, ignore_index=PAD_ID, reduction="none").sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad)
    assert w.grad is None


def test_linear_cross_entropy_refuses_a_second_backward_and_double_backward_needs_the_plain_path():
    h, w, y = _inputs()
    h1 = h.clone().requires_grad_()
    loss = linear_cross_entropy(h1, w, y, PAD_ID).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cannot run twice"):
        loss.backward()
    h2 = h.clone().requires_grad_()
    (g,) = torch.autograd.grad(linear_cross_entropy(h2, w, y, PAD_ID).sum(), h2, create_graph=True)
    with pytest.raises(RuntimeError):
        g.pow(2).sum().backward()  # once_differentiable: no silent wrong second derivative
    with twice_differentiable():
        (g,) = torch.autograd.grad(linear_cross_entropy(h2, w, y, PAD_ID).sum(), h2, create_graph=True)
    g.pow(2).sum().backward()
    assert h2.grad is not None and torch.isfinite(h2.grad).all()


def test_dropout_keeps_f_dropout_distribution():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = dropout(x, 0.3, training=True)
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.7))
    assert abs(float((out == 0).float().mean()) - 0.3) < 0.005
    assert abs(float(out.mean()) - 1.0) < 0.01  # inverted dropout keeps the mean
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x


def _model(dropout_p: float = 0.0, vocab: int = 15):
    torch.manual_seed(1)
    return build_model(ModelConfig(8, 8, 8, 2, dropout_p, dropout_p), vocab_size=vocab)


def test_flat_grads_clip_equals_clip_grad_norm():
    model = _model()
    grads = FlatGrads(model.encoder, model.decoder)
    reference = copy.deepcopy(model)
    x = torch.randint(4, 15, (5, 7))
    for m in (model, reference):
        torch.manual_seed(2)
        rec, kl = m.loss_terms(x)
        (rec + kl.sum(-1)).mean().backward()
    norm = grads.clip_(0.01)  # small enough to bite
    ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.01)
    torch.testing.assert_close(norm, ref_norm)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    assert float(grads.buffer.norm()) == pytest.approx(0.01, rel=1e-4)
    grads.zero_()
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())


def _plain_update(model, x, stepped: str, seed: int) -> None:
    """The unfused step: backward into everything, clip_grad_norm_ over all parameters, SGD on one network."""
    torch.manual_seed(seed)
    with twice_differentiable():  # the plain cross-entropy path
        rec, kl = model.loss_terms(x)
    model.zero_grad(set_to_none=True)
    (rec + kl.sum(-1)).mean().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    params = model.parameters() if stepped == "both" else getattr(model, stepped).parameters()
    torch.optim.SGD(params, lr=0.5).step()


def _strategy(cls, model):
    enc = torch.optim.SGD(model.encoder.parameters(), lr=0.5)
    dec = torch.optim.SGD(model.decoder.parameters(), lr=0.5)
    if cls is AggressiveStrategy:
        return cls(model, enc, dec, 5.0, lambda: torch.randint(4, 15, (5, 7)))
    return cls(model, enc, dec, 5.0)


def _assert_same_params(a, b, atol: float = 1e-6) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5)


def test_joint_step_matches_the_plain_update():
    model = _model()
    reference = copy.deepcopy(model)
    x = torch.randint(4, 15, (5, 7))
    x[0, 5:] = PAD_ID
    strategy = _strategy(JointStrategy, model)
    for seed in range(3):
        torch.manual_seed(seed)
        strategy.step(x, 1.0)
        _plain_update(reference, x, "both", seed)
    _assert_same_params(model, reference)


def test_encoder_only_step_matches_the_plain_update_and_leaves_the_decoder():
    model = _model()
    reference = copy.deepcopy(model)
    x = torch.randint(4, 15, (5, 7))
    strategy = _strategy(AggressiveStrategy, model)
    dec_before = [p.detach().clone() for p in model.decoder.parameters()]
    for seed in range(3):
        torch.manual_seed(seed)
        strategy.encoder_step(x, 1.0)
        _plain_update(reference, x, "encoder", seed)
    _assert_same_params(model, reference)
    assert all(torch.equal(a, b) for a, b in zip(dec_before, model.decoder.parameters(), strict=True))


@pytest.mark.parametrize("budget_mb", [0.01, 1.0, 64.0])
def test_iw_chunks_fit_the_memory_budget(budget_mb):
    model = _model(vocab=50)
    x = torch.randint(4, 50, (16, 30))
    per_sample = model.decoder.sample_bytes(x)
    chunk = samples_per_chunk(model, x, 500, budget_mb)
    assert 1 <= chunk <= MAX_CHUNK_VALUES // x.numel()
    if chunk > 1:
        assert chunk * per_sample <= budget_mb * 2**20
    if chunk < MAX_CHUNK_VALUES // x.numel():  # memory, not speed, set it: the next sample would not fit
        assert (chunk + 1) * per_sample > budget_mb * 2**20


def test_iw_splits_a_batch_whose_single_sample_exceeds_the_budget(monkeypatch):
    import lagvae.metrics as metrics

    model = _model(vocab=50).eval()
    x = torch.randint(4, 50, (8, 12))
    decoded: list[int] = []
    original = model.log_prob
    monkeypatch.setattr(model, "log_prob", lambda xs, z: decoded.append(xs.shape[0]) or original(xs, z))
    budget_mb = 1.5 * model.decoder.sample_bytes(x[:2]) / 2**20  # two sentences' sample fits, three do not
    with torch.no_grad():
        out = metrics.iw_log_likelihood(model, x, 4, budget_mb)
    assert out.shape == (8,) and torch.isfinite(out).all()
    assert max(decoded) <= 2
