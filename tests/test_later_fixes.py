"""The later fixes for collapse: each one's defining property, its pieces, and a short run of every one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import jacrev

from lagvae.config import ModelConfig
from lagvae.models import build_model
from lagvae.models.heads import BNHead, DeltaHead, DUHead, delta_variance_bounds
from lagvae.objectives import free_bits_example_kl, gaussian_kl_per_dim
from lagvae.training.mdr import MDRStrategy
from tests.test_cli import TINY
from tests.test_training_behaviour import _records

LATER = ("pretrain-fb", "bn-vae", "delta-vae", "du-vae", "skip-vae", "mdr")
finite = st.floats(-30, 30, allow_nan=False, width=32)


def _raw(seed: int, rows: int, dim: int, scale: float) -> torch.Tensor:
    return scale * torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


# ---- BN-VAE --------------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**16), rows=st.integers(2, 40), gamma=st.floats(0.1, 2.0), scale=st.floats(0.5, 20))
def test_bn_vae_batch_statistics_fix_each_dimensions_mean_square_at_gamma2_plus_beta2(seed, rows, gamma, scale):
    head = BNHead(4, gamma).train()
    with torch.no_grad():
        head.bn.bias.copy_(_raw(seed + 1, 1, 4, 1.0)[0])
    mu = _raw(seed, rows, 4, scale)
    out, logvar = head(mu, mu.clone())
    var = mu.var(0, unbiased=False)
    expected = gamma**2 * var / (var + head.bn.eps) + head.bn.bias.detach() ** 2  # eps: torch's BatchNorm's
    torch.testing.assert_close(out.pow(2).mean(0), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logvar, mu)  # the variance is not normalised
    assert not any(p is head.bn.weight for p in head.parameters())  # gamma is fixed, beta learned


def test_bn_vae_matches_torch_batchnorm_in_training_and_uses_running_statistics_in_eval():
    head, reference = BNHead(3, 0.6), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        reference.weight.fill_(0.6)
        head.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        reference.bias.copy_(head.bn.bias)
    for seed in range(3):
        mu = _raw(seed, 8, 3, 2.0)
        torch.testing.assert_close(head.train()(mu, mu)[0], reference.train()(mu))
    torch.testing.assert_close(head.bn.running_var, reference.running_var)
    mu = _raw(9, 5, 3, 2.0)
    torch.testing.assert_close(head.eval()(mu, mu)[0], reference.eval()(mu))


# ---- delta-VAE ----------------------------------------------------------------------------------------------
@given(mu=st.lists(finite, min_size=6, max_size=6), logvar=st.lists(finite, min_size=6, max_size=6))
def test_delta_vae_keeps_every_dimensions_kl_at_or_above_delta_for_any_encoder_output(mu, logvar):
    head = DeltaHead(0.15)
    m, v = head(torch.tensor(mu).view(2, 3), torch.tensor(logvar).view(2, 3))
    kl = gaussian_kl_per_dim(m, v)
    assert bool((kl >= 0.15 - 1e-5).all()), kl
    # and exactly delta + relu(m) / 2: the rate above delta is the encoder's to choose
    torch.testing.assert_close(kl, 0.15 + torch.relu(torch.tensor(mu).view(2, 3)) / 2, rtol=1e-4, atol=1e-4)


def test_delta_variance_bounds_are_where_a_zero_mean_kl_is_delta():
    for delta in (0.05, 0.15, 1.0):
        lo, hi = delta_variance_bounds(delta)
        assert lo < 1 < hi
        for s in (lo, hi):
            assert 0.5 * (s - math.log(s) - 1) == pytest.approx(delta, abs=1e-9)


# ---- DU-VAE -------------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**16), logvar=st.lists(finite, min_size=8, max_size=8), training=st.booleans())
def test_du_vae_variance_never_falls_below_its_floor_once_the_kl_weight_reaches_1(seed, logvar, training):
    head = DUHead(4, gamma=0.5, rate=1.0, p=0.5).train(training)
    head.full_kl.fill_(True)
    torch.manual_seed(seed)
    _, out = head(_raw(seed, 2, 4, 3.0), torch.tensor(logvar).view(2, 4))
    assert bool((out.exp() >= head.floor * (1 - 1e-6)).all())
    assert head.floor == pytest.approx(1 / (2 * math.pi * math.e))


def test_du_vae_renormalises_its_learned_scale_and_drops_out_only_above_the_floor_after_warm_up():
    head = DUHead(4, gamma=0.5, rate=1.0, p=0.5).train()
    with torch.no_grad():
        head.bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # learned away from gamma
    mu, logvar = _raw(0, 64, 4, 3.0), torch.zeros(64, 4)
    out, same = head(mu, logvar)
    torch.testing.assert_close(same, logvar)  # warm-up: no floor, no dropout
    scale = 0.5 * head.bn.weight / head.bn.weight.pow(2).mean().sqrt()
    torch.testing.assert_close(out.std(0, unbiased=False), scale.detach(), rtol=1e-3, atol=1e-4)
    head.full_kl.fill_(True)
    torch.manual_seed(0)
    _, dropped = head(mu, logvar)
    kept = dropped.exp() > head.floor * 1.5
    assert 0.3 < kept.float().mean() < 0.7  # p = 0.5 of the variances above the floor dropped
    torch.testing.assert_close(dropped.exp()[kept], torch.full_like(dropped[kept], 2 + head.floor))
    torch.testing.assert_close(dropped.exp()[~kept], torch.full_like(dropped[~kept], head.floor))
    _, evaluated = head.eval()(mu, logvar)
    torch.testing.assert_close(evaluated.exp(), torch.full_like(evaluated, 1 + head.floor))


# ---- Skip-VAE -----------------------------------------------------------------------------------------------
def _cut_input_path(model: torch.nn.Module, embed_dim: int) -> None:
    """Zero every way z reaches the text decoder's LSTM: its initial state and its input at every step."""
    with torch.no_grad():
        model.decoder.init_state.weight.zero_()
        model.decoder.lstm.weight_ih_l0[:, embed_dim:].zero_()


@pytest.mark.parametrize("skip", [True, False])
def test_skip_vae_text_logits_depend_on_z_at_every_position_through_the_skip(skip):
    torch.manual_seed(0)
    model = build_model(ModelConfig(6, 8, 8, 3, 0.0, 0.0, skip=skip), vocab_size=12).eval()
    _cut_input_path(model, embed_dim=6)
    x = torch.randint(4, 12, (2, 7))
    jac = jacrev(lambda z: model.decoder.step_logits(x, z, None)[0])(torch.randn(2, 3))  # [2, 7, 12, 2, 3]
    per_position = jac.abs().sum((2, 3, 4)).detach()
    if skip:
        assert bool((per_position > 1e-6).all()), per_position
    else:  # the control: with the input path cut and no skip, nothing of z is left
        assert float(per_position.max()) == 0.0


@pytest.mark.parametrize("skip", [True, False])
def test_skip_vae_image_logits_depend_on_z_through_the_output_layer_when_every_gate_is_cut(skip):
    torch.manual_seed(0)
    config = ModelConfig(kind="image", latent_dim=3, channels=4, enc_features=8, kernels="3,3", skip=skip)
    model = build_model(config, vocab_size=0).eval()
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.v_cond.weight.zero_()
            layer.h_cond.weight.zero_()
    x = torch.rand(2, 1, 6, 6).round()
    jac = jacrev(lambda z: model.decoder.logits(x, z))(torch.randn(2, 3))
    per_pixel = jac.abs().sum((1, 4, 5)).detach()
    assert bool((per_pixel > 1e-6).all()) if skip else float(per_pixel.max()) == 0.0


# ---- MDR ----------------------------------------------------------------------------------------------------
def _mdr(rate: float) -> tuple[MDRStrategy, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(6, 8, 8, 2, 0.0, 0.0), vocab_size=12)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model.encoder, model.decoder)]
    return MDRStrategy(model, *opts, 5.0, rate=rate, init=0.5, lr=1e-2), torch.randint(4, 12, (8, 6))


def test_mdr_multiplier_rises_while_the_rate_is_below_r_and_never_goes_negative():
    strategy, x = _mdr(rate=5.0)  # a fresh encoder's KL is about 0, far below 5 nats
    seen = [strategy.multiplier]
    for _ in range(20):
        kl = float(strategy.step(x, 1.0).kl)
        assert kl < 5.0
        seen.append(strategy.multiplier)
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen
    strategy, x = _mdr(rate=0.0)  # any KL is above r = 0: the multiplier falls, and stays >= 0
    seen = [strategy.multiplier]
    for _ in range(200):
        strategy.step(x, 1.0)
        seen.append(strategy.multiplier)
    assert seen[-1] < seen[0] and min(seen) >= 0.0
    restored, _ = _mdr(rate=0.0)
    restored.load_state_dict(strategy.state_dict())
    assert restored.multiplier == strategy.multiplier


def test_mdr_loss_is_the_elbo_plus_the_multiplier_times_the_rate_shortfall():
    strategy, _ = _mdr(rate=5.0)
    rec, kl_per_dim = torch.tensor([10.0, 20.0]), torch.tensor([[1.0, 2.0], [0.5, 0.5]])
    loss, _, kl = strategy._combine(rec, kl_per_dim, 1.0)
    torch.testing.assert_close(loss, rec + kl + 0.5 * (5.0 - kl))


# ---- encoder pretraining + free bits ------------------------------------------------------------------------
def test_free_bits_per_example_masks_each_dimension_below_target_out_of_value_and_gradient():
    kl = torch.tensor([[0.1, 0.3, 0.5], [0.3, 0.1, 0.2]], requires_grad=True)
    term = free_bits_example_kl(kl, 0.25)
    torch.testing.assert_close(term, torch.tensor([0.8, 0.3]))
    term.sum().backward()
    torch.testing.assert_close(kl.grad, torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))


PRETRAIN = [*TINY, "--set", "train.pretrain.epochs=2", "--set", "train.warm_up=1", "--epochs", "2"]


def _pretrain(out: Path, *extra: str) -> int:
    from lagvae.cli import main

    return main(["train", "synthetic", "--method", "pretrain-fb", "--out", str(out), *PRETRAIN, *extra])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert _pretrain(out) == 0
    return out


def test_pretrain_fb_runs_an_autoencoder_phase_then_anneals_with_a_fresh_decoder(pretrained):
    records = _records(pretrained)
    assert [(r["epoch"], r["phase"]) for r in records] == [
        (0, "autoencoder"), (1, "autoencoder"), (2, "train"), (3, "train"),
    ]  # fmt: skip
    assert [r["kl_weight"] for r in records[:2]] == [0.0, 0.0]
    assert 0.0 < records[2]["kl_weight"] < 1.0  # the schedule starts again from 0 at the phase boundary
    assert records[3]["train_seconds"] > records[1]["train_seconds"] > 0  # both phases counted
    final = json.loads((pretrained / "final.json").read_text())
    assert final["best_epoch"] in (2, 3)  # the autoencoder's best is never the run's
    assert final["train_seconds"] == pytest.approx(records[3]["train_seconds"], rel=0.05)


def test_pretrain_fb_second_phase_starts_from_the_autoencoders_encoder_and_a_reinitialised_decoder(tmp_path):
    from lagvae.experiments.presets import make_config
    from lagvae.training.loop import Trainer

    config = make_config("synthetic", "pretrain-fb", epochs=1, overrides=[a for a in TINY if "=" in a])
    config.train.pretrain.epochs, config.progress, config.data.train_limit = 1, False, 48
    trainer = Trainer(config, tmp_path / "run")
    seen: dict[str, dict] = {}
    end = trainer._end_autoencoder_phase

    def spy() -> None:
        seen["trained"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        end()
        seen["after"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer._end_autoencoder_phase = spy  # type: ignore[method-assign]
    trainer.fit()
    encoder = [k for k in seen["after"] if k.startswith("encoder.")]
    decoder = [k for k in seen["after"] if k.startswith("decoder.")]
    assert all(torch.equal(seen["after"][k], seen["trained"][k]) for k in encoder)  # best = the only epoch
    torch.manual_seed(config.train.seed + 1)
    fresh = build_model(config.model, len(trainer.splits.vocab)).decoder.state_dict()
    assert all(torch.equal(seen["after"][k], fresh[k.removeprefix("decoder.")]) for k in decoder)
    assert not all(torch.equal(seen["trained"][k], seen["after"][k]) for k in decoder)


class _Killed(Exception):
    """Stands for a process killed between epochs (main turns KeyboardInterrupt into an exit code)."""


@pytest.mark.parametrize("stop_after", [1, 2])  # inside the autoencoder phase, and just after its end
def test_pretrain_fb_resumes_across_the_phase_boundary_to_the_uninterrupted_run(tmp_path, pretrained, stop_after):
    from lagvae.training.loop import Trainer

    epoch = Trainer._epoch

    def stopping(self, val_batches):  # type: ignore[no-untyped-def]
        epoch(self, val_batches)  # last.pt written, then the process "dies"
        if self.state.epoch == stop_after:
            raise _Killed

    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_epoch", stopping)
        with pytest.raises(_Killed):
            _pretrain(out)
    phase = torch.load(out / "last.pt", weights_only=True)["state"]["phase"]
    assert phase == ("autoencoder" if stop_after == 1 else "train")
    assert _pretrain(out, "--resume") == 0
    strip = [{k: v for k, v in r.items() if k != "train_seconds"} for r in _records(out)]
    assert strip == [{k: v for k, v in r.items() if k != "train_seconds"} for r in _records(pretrained)]
    a, b = (json.loads((d / "final.json").read_text()) for d in (out, pretrained))
    assert (a["nll"], a["kl"], a["mi_full"]) == (b["nll"], b["kl"], b["mi_full"])


# ---- every later fix, trained and tabulated by one compare ---------------------------------------------------
def test_compare_runs_and_tabulates_every_later_fix(tmp_path, capsys, inline_workers):
    from lagvae.cli import main

    grid = tmp_path / "grid"
    args = ["compare", "synthetic", "--methods", ",".join(LATER), "--seeds", "1", "--out", str(grid)]
    sets = [value for flag, value in zip(TINY, TINY[1:], strict=False) if flag == "--set"]
    tiny = ["--epochs", "2", "--train-limit", "48", *(a for v in sets for a in ("--set", v))]
    assert main([*args, *tiny, "--set", "train.pretrain.epochs=1", "--set", "train.warm_up=1"]) == 0
    table = (grid / "compare.md").read_text()
    for method in LATER:
        assert f"| {method} |" in table
        final = json.loads((grid / method / "seed0" / "final.json").read_text())
        assert math.isfinite(final["nll"]) and final["nll"] > 0
    delta = json.loads((grid / "delta-vae" / "seed0" / "final.json").read_text())
    assert delta["kl"] >= 2 * 0.15 - 1e-4  # the committed rate: z = 2 dimensions of at least delta each
    mdr = _records(grid / "mdr" / "seed0")
    assert mdr[-1]["mdr_multiplier"] > 0.5  # the rate stayed below r = 5 nats on tiny data: it rose
