"""Collapse diagnostics: the whole-split I_q against closed forms, the collapse alarm, TensorBoard logging."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch import Tensor, nn

from lagvae.config import ConfigError, EvalConfig
from lagvae.experiments.presets import make_config
from lagvae.metrics import evaluate, full_split_mi, mutual_information_full
from lagvae.models.vae import VAE
from lagvae.training.alarm import COLLAPSE, KL_WITHOUT_INFORMATION, alarm_message, collapse_alarm

EXACT_MI = 2.5  # I(x; z) of x ~ N(0, 1), z | x ~ N(x, s^2) with 1 / s^2 = e^5 - 1


class _LinearGaussianEncoder(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, torch.full_like(x, -math.log(math.exp(2 * EXACT_MI) - 1))


class _NoDecoder(nn.Module):
    """Stands in for a decoder: the diagnostics under test read only the encoder."""

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        return torch.zeros(z.shape[:2])

    def n_units(self, x: Tensor) -> Tensor:
        return torch.tensor(x.shape[0])


def test_mi_full_meets_the_closed_form_where_the_minibatch_estimate_is_capped():
    torch.manual_seed(0)
    x = torch.randn(4000, 1)
    out = evaluate(VAE(_LinearGaussianEncoder(), _NoDecoder()), x.split(100))
    assert out["mi_full"] == pytest.approx(EXACT_MI, abs=0.05) and out["mi_full_n"] == 4000
    assert out["mi"] < EXACT_MI - 0.08  # the paper's per-minibatch estimate, biased low by its log-100 cap


def test_mi_full_of_a_collapsed_encoder_is_zero_and_never_exceeds_log_n():
    collapsed = mutual_information_full(torch.zeros(500, 4), torch.zeros(500, 4))
    assert abs(float(collapsed)) < 1e-9
    separated = mutual_information_full(torch.randn(500, 3) * 10, torch.full((500, 3), -20.0))
    assert float(separated) == pytest.approx(math.log(500), abs=1e-3)


def test_mi_full_subsamples_large_splits_with_a_fixed_seed():
    mu, logvar = torch.randn(900, 2), torch.zeros(900, 2) - 2
    value, used = full_split_mi(mu, logvar, max_examples=300)
    assert used == 300 and full_split_mi(mu, logvar, max_examples=300) == (value, used)
    assert full_split_mi(mu, logvar, max_examples=0)[1] == 900  # 0: no bound


def _records(rows: list[tuple[int, float, float]]) -> list[dict]:
    return [{"epoch": i, "au": au, "mi_full": mi, "kl": kl} for i, (au, mi, kl) in enumerate(rows)]


def test_alarm_needs_the_condition_on_consecutive_validations():
    e = EvalConfig()
    collapsing = _records([(0, 0.01, 0.02), (0, 0.01, 0.01)])
    assert collapse_alarm(collapsing[:1], e) is None  # one validation is not enough
    assert collapse_alarm(collapsing, e) == COLLAPSE
    assert collapse_alarm(_records([(0, 0.01, 0.02), (1, 0.01, 0.01)]), e) is None  # an active unit
    assert collapse_alarm(_records([(0, 0.01, 0.02), (0, 0.2, 0.3)]), e) is None  # information arrived
    spent = _records([(0, 0.3, 9.3), (0, 0.5, 9.28)])  # free bits at 0.5 on PTB: KL 9.28, MI ~ 0
    assert collapse_alarm(spent, e) == KL_WITHOUT_INFORMATION
    assert collapse_alarm(_records([(2, 3.1, 11.0), (3, 3.3, 11.2)]), e) is None  # a good aggressive run
    e.alarm_epochs = 3
    assert collapse_alarm(collapsing, e) is None
    assert collapse_alarm([{"epoch": 0, "au": 0, "kl": 0.0}] * 3, e) is None  # runs without mi_full


def test_the_alarm_suggests_aggressive_training_only_to_runs_without_it():
    record = {"epoch": 1, "au": 23, "kl": 19.8, "mi_full": 1.4}
    for kind in (COLLAPSE, KL_WITHOUT_INFORMATION):
        assert "--method aggressive" in alarm_message(kind, record, 2, None)
        for aggressive in (True, False):
            message = alarm_message(kind, record, 2, aggressive)
            assert "--method aggressive" not in message
            assert ("still on" in message) is aggressive and ("has ended" in message) is not aggressive


# Generating the default 16,000 + 2,000 + 2,000 synthetic sentences takes seconds; these runs need 500.
SMALL_SPLITS = ["data.n_train=500", "data.n_val=200", "data.n_test=16"]


def test_a_plain_vae_on_the_synthetic_data_raises_the_alarm_within_three_epochs(tmp_path):
    from lagvae.training.run import train_and_evaluate

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("lagvae").addHandler(handler)
    try:
        config = make_config("synthetic", "vae", epochs=3, train_limit=500, overrides=SMALL_SPLITS)
        config.eval.iw_samples, config.eval.posterior_points, config.progress = 2, 0, False
        train_and_evaluate(config, tmp_path / "vae")
    finally:
        logging.getLogger("lagvae").removeHandler(handler)
    records = [line for line in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert any('"alarm": "collapse"' in r for r in records)
    announced = [line for line in lines if line.startswith("posterior collapse")]
    assert len(announced) == 1 and "--method aggressive" in announced[0]  # once, with the remedy


def test_a_latent_free_model_raises_no_collapse_alarm(tmp_path):
    from lagvae.training.run import train_and_evaluate

    config = make_config("synthetic", "lm", epochs=3, train_limit=500, overrides=SMALL_SPLITS)  # vae alarms here
    config.eval.posterior_points, config.progress = 0, False
    train_and_evaluate(config, tmp_path / "lm")
    records = [json.loads(line) for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r.get("alarm") is None for r in records)


def test_alarm_off_and_a_missing_tensorboard_are_one_line(tmp_path, monkeypatch):
    from lagvae.training.run import train_and_evaluate

    config = make_config("synthetic", "vae", epochs=1, train_limit=64, overrides=["eval.alarm=false", *SMALL_SPLITS])
    config.eval.iw_samples, config.eval.posterior_points, config.progress = 2, 0, False
    config.log.tensorboard, config.log.every_steps = True, 2
    train_and_evaluate(config, tmp_path / "tb")
    assert '"alarm"' not in (tmp_path / "tb" / "metrics.jsonl").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]  # 4 steps of 16 sentences
    assert len(events.Scalars("val/mi_full")) == 1 and "val/elbo" in events.Tags()["scalars"]
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'lagvae\[tensorboard\]'"):
        train_and_evaluate(config, tmp_path / "no-tb")
