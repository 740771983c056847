"""Each baseline's distinctive rule: cyclical schedule, free bits, beta, SA-VAE refinement, the latent-free LM."""

from __future__ import annotations

import pytest
import torch

from lagvae.config import CyclicalConfig, ModelConfig, RunConfig, SAVAEConfig, TrainConfig
from lagvae.experiments.presets import make_config
from lagvae.inference import Refined, svi_refine
from lagvae.metrics import evaluate, iw_log_likelihood
from lagvae.models import build_model
from lagvae.objectives import free_bits_kl, gaussian_kl, gaussian_kl_per_dim
from lagvae.training.build import build_posterior
from lagvae.training.savae import SemiAmortizedStrategy, svi_options
from lagvae.training.schedules import cyclical, kl_weight
from lagvae.training.strategies import JointStrategy
from tests.conftest import linear_gaussian_vae


def test_cyclical_schedule_values_and_period():
    period = 100
    values = [cyclical(t, period, ratio=0.5) for t in range(300)]
    assert values[0] == 0.0 and values[25] == 0.5 and values[49] == pytest.approx(0.98)
    assert all(v == 1.0 for v in values[50:100])
    assert values[100:200] == values[:100] == values[200:300]
    assert cyclical(25, period, ratio=0.5, floor=0.2) == pytest.approx(0.6)
    for shape in ("cosine", "sigmoid"):
        ramp = [cyclical(t, period, 0.5, shape=shape) for t in range(50)]
        assert ramp[0] == pytest.approx(0.0, abs=1e-9) and ramp == sorted(ramp) and ramp[25] == pytest.approx(0.5)


def test_cyclical_method_spreads_n_cycles_over_the_run():
    train = TrainConfig(schedule="cyclical", epochs=8, cyclical=CyclicalConfig(n_cycles=4, ratio=0.5))
    iters = 10  # 80 steps, period 20
    weights = [kl_weight(t, train, iters) for t in range(80)]
    assert [t for t, w in enumerate(weights) if w == 0.0] == [0, 20, 40, 60]
    # a resume with more epochs keeps the period the run started with (passed as cycle_epochs)
    longer = TrainConfig(schedule="cyclical", epochs=12, cyclical=CyclicalConfig(n_cycles=4, ratio=0.5))
    assert [kl_weight(t, longer, iters, cycle_epochs=8) for t in range(80)] == weights


def test_a_resumed_cyclical_run_keeps_its_starting_period(tmp_path):
    from lagvae.cli import main
    from tests.test_cli import TINY

    out = tmp_path / "cyc"
    assert main(["train", "synthetic", "--method", "cyclical", "--out", str(out), *TINY]) == 0
    assert (
        main(["train", "synthetic", "--method", "cyclical", "--out", str(out), *TINY, "--epochs", "3", "--resume"]) == 0
    )
    assert torch.load(out / "last.pt", weights_only=True)["state"]["cycle_epochs"] == 2


def test_beta_is_a_constant_weight_on_the_kl_term_only():
    config = make_config("synthetic", "beta", overrides=["train.beta=0.4"])
    assert {kl_weight(t, config.train, 100) for t in (0, 50, 10_000)} == {0.4}
    strategy = JointStrategy(build_model(ModelConfig(8, 8, 8, 2), 12), None, None, 5.0)  # type: ignore[arg-type]
    rec, kl = torch.tensor([3.0, 5.0]), torch.tensor([[1.0, 0.5], [2.0, 0.0]])
    loss, rec_out, kl_out = strategy._combine(rec, kl, 0.4)
    torch.testing.assert_close(loss, rec + 0.4 * kl.sum(-1))
    torch.testing.assert_close(rec_out, rec)  # reported terms are unweighted
    torch.testing.assert_close(kl_out, kl.sum(-1))


def test_free_bits_gradient_vanishes_below_target():
    mu = torch.tensor([[0.05, 1.0, 0.0], [0.05, 2.0, 0.0]], requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    kl_dim = gaussian_kl_per_dim(mu, logvar)  # per-dim batch means: 0.00125, 1.25, 0
    term = free_bits_kl(kl_dim, target=0.5)
    assert term.shape == (2,) and float(term[0].detach()) == pytest.approx(0.5 + 1.25 + 0.5)
    term[0].backward()
    assert torch.all(mu.grad[:, 0] == 0) and torch.all(mu.grad[:, 2] == 0)  # under lambda: no gradient
    assert torch.all(mu.grad[:, 1] != 0)


# SVI with the clip out of reach (max_grad_norm 1e6), for the finite-difference checks: its factor is
# deliberately not differentiated, so finite differences would see it
UNCLIPPED = {"momentum": 0.5, "max_grad_norm": 1e6, "clip": "batch"}


def _analytic_elbo(vae, dec, x, mu, logvar, samples=20_000):
    torch.manual_seed(0)
    eps = torch.randn(x.shape[0], samples, mu.shape[-1], dtype=x.dtype)
    z = mu.unsqueeze(1) + (0.5 * logvar).exp().unsqueeze(1) * eps
    return (vae.log_prob(x, z).mean(1) - gaussian_kl(mu, logvar)).detach()


def test_savae_refinement_raises_the_elbo():
    torch.manual_seed(0)  # the encoder's initial weights come from the global generator
    vae, dec = linear_gaussian_vae(seed=5)
    x = torch.randn(32, 3)
    with torch.no_grad():
        mu0, logvar0 = vae.encode(x)
    # lr is Kim's, on the batch mean: 0.05 per example on this batch of 32
    mu, logvar = svi_refine(vae, x, mu0, logvar0, steps=30, lr=0.05 * 32, momentum=0.5, max_grad_norm=5.0, clip="batch")
    before = _analytic_elbo(vae, dec, x, mu0, logvar0)
    after = _analytic_elbo(vae, dec, x, mu, logvar)
    # one-sample SVI gradients are noisy, so the guarantee is on average, not for every x
    assert float((after - before).mean()) > 0.5
    assert float((after > before).float().mean()) >= 0.8


def test_svi_steps_are_bounded_and_use_kims_batch_mean_learning_rate():
    vae, _ = linear_gaussian_vae(seed=5)
    x = 1e4 * torch.randn(8, 3)  # gradients of order 1e4-1e8: unclipped, one step would fly off
    mu0, logvar0 = torch.zeros(8, 2), torch.zeros(8, 2)
    mu, logvar = svi_refine(vae, x, mu0, logvar0, steps=6, lr=0.1 * 8, momentum=0.5, max_grad_norm=2.0, clip="example")
    bound = 0.1 * 2.0 * 6 / (1 - 0.5)  # (lr / B) * max_grad_norm * steps / (1 - momentum)
    assert 0.5 * bound < float((mu - mu0).abs().max()) <= bound and float((logvar - logvar0).abs().max()) <= bound
    # Kim's clip: mu's and logvar's batch-mean gradients, each as a whole, have norm <= max_grad_norm, so
    # with lr / B per example neither tensor moves further than lr * max_grad_norm * steps / (1 - momentum)
    mu, logvar = svi_refine(vae, x, mu0, logvar0, steps=6, lr=1.0, momentum=0.5, max_grad_norm=2.0, clip="batch")
    bound = 1.0 * 2.0 * 6 / (1 - 0.5)
    assert 0.5 * bound < float((mu - mu0).norm()) <= bound and float((logvar - logvar0).norm()) <= bound
    train = TrainConfig(strategy="savae", batch_size=32, savae=SAVAEConfig(lr=1.0, steps=7))
    options = SemiAmortizedStrategy._options(train, lambda: (x, None))
    svi = options["svi"]
    assert svi == svi_options(train)
    assert svi["steps"] == 7 and svi["lr"] == 1.0 and svi["clip"] == "example" and svi["max_grad_norm"] == 5.0
    assert options["anneal"] and options["decoder_through"]
    assert build_posterior(RunConfig(train=train)) == Refined(svi)  # what a finished run's metrics use


def test_savae_gradient_reaches_the_encoder_through_the_svi_steps():
    torch.manual_seed(0)
    vae, _ = linear_gaussian_vae(seed=6)
    vae = vae.double()
    x = torch.randn(2, 3, dtype=torch.float64)
    noise = [torch.randn(2, 2, dtype=torch.float64) for _ in range(5)]
    final_eps = torch.randn(2, 2, dtype=torch.float64)

    def refined_elbo(mu0: torch.Tensor) -> torch.Tensor:
        logvar0 = torch.full_like(mu0, -1.0)
        # 0.05 per example on this batch of 2
        mu, logvar = svi_refine(vae, x, mu0, logvar0, **UNCLIPPED, steps=5, lr=0.1, create_graph=True, noise=noise)
        z = (mu + (0.5 * logvar).exp() * final_eps).unsqueeze(1)
        return (vae.log_prob(x, z).squeeze(1) - gaussian_kl(mu, logvar)).sum()

    mu0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(refined_elbo(mu0), mu0)
    numeric = torch.zeros_like(grad)
    h = 1e-6
    for i in range(2):
        for j in range(2):
            step = torch.zeros_like(mu0)
            step[i, j] = h
            numeric[i, j] = (refined_elbo(mu0.detach() + step) - refined_elbo(mu0.detach() - step)) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-6)
    # the refinement really is in the path: the gradient differs from the amortized ELBO's
    (direct,) = torch.autograd.grad(
        (vae.log_prob(x, (mu0 + (-0.5 * torch.ones_like(mu0)).exp() * final_eps).unsqueeze(1)).squeeze(1)
         - gaussian_kl(mu0, torch.full_like(mu0, -1.0))).sum(),
        mu0,
    )  # fmt: skip
    assert not torch.allclose(grad, direct, atol=1e-3)


def test_savae_decoder_gradient_flows_through_the_svi_steps_as_kims_does():
    torch.manual_seed(0)
    vae, dec = linear_gaussian_vae(seed=7)
    vae = vae.double()
    x = torch.randn(3, 3, dtype=torch.float64)
    noise = [torch.randn(3, 2, dtype=torch.float64) for _ in range(4)]
    final_eps = torch.randn(3, 2, dtype=torch.float64)
    mu0, logvar0 = (t.detach().clone() for t in vae.encode(x))  # this encoder's logvar is a parameter view

    def refined_elbo(through: bool) -> torch.Tensor:
        mu, logvar = svi_refine(vae, x, mu0, logvar0, **UNCLIPPED, steps=4, lr=0.15, create_graph=True, noise=noise)
        if not through:
            mu, logvar = mu.detach(), logvar.detach()
        z = (mu + (0.5 * logvar).exp() * final_eps).unsqueeze(1)
        return (vae.log_prob(x, z).squeeze(1) - gaussian_kl(mu, logvar)).sum()

    (grad,) = torch.autograd.grad(refined_elbo(True), dec.b)
    numeric = torch.zeros_like(grad)
    for i in range(grad.numel()):
        with torch.no_grad():
            dec.b[i] += 1e-6
        up = float(refined_elbo(True).detach())
        with torch.no_grad():
            dec.b[i] -= 2e-6
        down = float(refined_elbo(True).detach())
        with torch.no_grad():
            dec.b[i] += 1e-6
        numeric[i] = (up - down) / 2e-6
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-6)
    (held,) = torch.autograd.grad(refined_elbo(False), dec.b)  # lambda_K held fixed: lagvae's earlier choice
    assert not torch.allclose(grad, held, atol=1e-4)


def test_savae_svi_objective_carries_the_annealed_kl_weight(monkeypatch):
    from lagvae.training import savae

    seen: list[float] = []
    real = savae.svi_refine

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["kl_weight"])
        return real(*args, **kwargs)

    monkeypatch.setattr(savae, "svi_refine", spy)
    torch.manual_seed(0)
    x = torch.randint(4, 12, (4, 6))
    for anneal in (True, False):
        model = build_model(ModelConfig(8, 8, 8, 2, 0.0, 0.0), vocab_size=12)
        opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model.encoder, model.decoder)]
        svi = svi_options(TrainConfig(savae=SAVAEConfig(steps=2)))
        SemiAmortizedStrategy(model, *opts, 5.0, svi, anneal=anneal).step(x, 0.3)
    assert seen == [0.3, 1.0]
    mu0, logvar0 = torch.zeros(4, 2), torch.zeros(4, 2)
    torch.manual_seed(1)
    svi = svi_options(TrainConfig(savae=SAVAEConfig(steps=3, lr=2.0)))
    weak = svi_refine(model, x, mu0, logvar0, **svi, kl_weight=0.1)[0]
    torch.manual_seed(1)
    assert not torch.allclose(weak, svi_refine(model, x, mu0, logvar0, **svi, kl_weight=1.0)[0])


def test_savae_strategy_steps_both_networks_and_metrics_use_the_refined_posterior():
    torch.manual_seed(0)
    model = build_model(ModelConfig(8, 8, 8, 2, 0.0, 0.0), vocab_size=12)
    enc = torch.optim.SGD(model.encoder.parameters(), lr=0.5)
    dec = torch.optim.SGD(model.decoder.parameters(), lr=0.5)
    strategy = SemiAmortizedStrategy(model, enc, dec, 5.0, svi_options(TrainConfig(savae=SAVAEConfig(steps=3))))
    x = torch.randint(4, 12, (4, 6))
    before = [p.detach().clone() for p in model.parameters()]
    stats = strategy.step(x, 1.0)
    assert torch.isfinite(stats.loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()
    with torch.no_grad():
        amortized = model.encode(x)[0]
        refined = strategy.posterior(model, x)[0]
        assert JointStrategy(model, enc, dec, 5.0).posterior(model, x)[0].equal(amortized)
    assert not torch.allclose(amortized, refined)


def test_lm_nll_is_its_exact_token_log_likelihood():
    config = make_config("synthetic", "lm")
    assert config.model.latent_dim == 0 and config.eval.iw_samples == 1
    torch.manual_seed(0)
    model = build_model(ModelConfig(8, 8, 8, 0, 0.0, 0.0), vocab_size=12).eval()
    x = torch.randint(4, 12, (5, 7))
    with torch.no_grad():
        logits, _ = model.decoder.step_logits(x[:, :-1], torch.zeros(5, 0), None)
        exact = torch.log_softmax(logits, -1).gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)
        for k in (1, 7):
            torch.testing.assert_close(iw_log_likelihood(model, x, k), exact)
        out = evaluate(model, [x], iw_samples=1)
    assert out["kl"] == 0.0 and out["mi"] == 0.0 and out["au"] == 0
    assert out["nll"] == pytest.approx(-float(exact.mean()), rel=1e-6)
