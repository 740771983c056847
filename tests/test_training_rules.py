"""The training rules on scripted inputs: inner-loop stop, aggressive switch-off, KL schedule, LR halving."""

from __future__ import annotations

import torch

from lagvae.config import ModelConfig
from lagvae.models import build_model
from lagvae.training.aggressive import AggressiveStrategy, InnerLoopStop
from lagvae.training.lr_rule import PlateauHalving
from lagvae.training.schedules import linear_anneal
from lagvae.training.strategies import JointStrategy


def run_stopper(losses: list[float], window: int, max_steps: int) -> int:
    """Feed per-step mean losses (1 unit each) until the stopper says stop; return the step count."""
    stop = InnerLoopStop(window, max_steps)
    for loss in losses:
        if stop.update(torch.tensor(loss), torch.tensor(1.0)):
            return stop.steps
    raise AssertionError("never stopped")


def test_inner_loop_stops_when_window_loss_rises():
    # windows of 3: means 5, 4, 3, then 3.5 > 3 -> stop after step 12
    losses = [5, 5, 5, 4, 4, 4, 3, 3, 3, 3.5, 3.5, 3.5, 1, 1, 1]
    assert run_stopper(losses, window=3, max_steps=100) == 12


def test_inner_loop_keeps_going_on_equal_loss_and_compares_whole_windows():
    # a window whose mean equals the previous one's does not stop the loop (only a rise does), and a single high
    # step inside a window does not stop it either: only the window mean counts
    losses = [5, 5, 5, 9, 1, 2, 4, 4, 4, 3, 3, 3, 4, 4, 4]  # means 5, 4, 4 (equal: go on), 3, 4 (rise: stop)
    assert run_stopper(losses, window=3, max_steps=100) == 15
    assert run_stopper([2.0] * 40, window=4, max_steps=30) == 30  # a flat loss runs to the cap


def test_inner_loop_stops_at_the_cap():
    assert run_stopper([100.0 - i for i in range(200)], window=15, max_steps=100) == 100


def test_inner_loop_uses_loss_per_unit_not_per_batch():
    stop = InnerLoopStop(window=1, max_steps=100)
    assert not stop.update(torch.tensor(10.0), torch.tensor(10.0))  # 1.0 per unit
    assert not stop.update(torch.tensor(18.0), torch.tensor(20.0))  # 0.9: larger batch, lower rate
    assert stop.update(torch.tensor(10.0), torch.tensor(10.0))  # 1.0 > 0.9


def _tiny_strategy(max_inner: int = 3, window: int = 100) -> tuple[AggressiveStrategy, list[int]]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(8, 8, 8, 2, 0.0, 0.0), vocab_size=12)
    enc = torch.optim.SGD(model.encoder.parameters(), lr=0.5)
    dec = torch.optim.SGD(model.decoder.parameters(), lr=0.5)
    calls: list[int] = []

    def sample() -> tuple[torch.Tensor, None]:
        calls.append(1)
        return torch.randint(4, 12, (4, 6)), None

    return AggressiveStrategy(model, enc, dec, 5.0, sample, window, max_inner), calls


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_aggressive_step_runs_inner_encoder_steps_then_one_decoder_step():
    strategy, calls = _tiny_strategy(max_inner=3)
    x = torch.randint(4, 12, (4, 6))
    enc0, dec0 = _params(strategy.model.encoder), _params(strategy.model.decoder)
    stats = strategy.step(x, 1.0)
    assert stats.inner_steps == 3
    assert len(calls) == 2  # the first inner batch is x itself
    assert _changed(enc0, strategy.model.encoder) and _changed(dec0, strategy.model.decoder)


def test_single_network_update_leaves_the_other_network_alone():
    strategy, _ = _tiny_strategy()
    model = strategy.model
    x = torch.randint(4, 12, (4, 6))
    enc0, dec0 = _params(model.encoder), _params(model.decoder)
    rec, kl = model.loss_terms(x)
    strategy._update((rec + kl.sum(-1)).mean(), (strategy.enc_opt,))
    assert _changed(enc0, model.encoder) and not _changed(dec0, model.decoder)
    enc1 = _params(model.encoder)
    rec, kl = model.loss_terms(x)
    strategy._update((rec + kl.sum(-1)).mean(), (strategy.dec_opt,))
    assert not _changed(enc1, model.encoder) and _changed(dec0, model.decoder)


def test_aggressive_switches_off_for_good_when_validation_mi_falls():
    strategy, calls = _tiny_strategy()
    for mi in (0.5, 1.0, 1.2):
        strategy.end_epoch({"mi": mi})
        assert strategy.aggressive
    strategy.end_epoch({"mi": 1.1})
    assert not strategy.aggressive
    strategy.end_epoch({"mi": 5.0})
    assert not strategy.aggressive
    calls.clear()
    stats = strategy.step(torch.randint(4, 12, (4, 6)), 1.0)
    assert stats.inner_steps == 0 and not calls  # plain joint step now
    restored, _ = _tiny_strategy()
    restored.load_state_dict(strategy.state_dict())
    assert not restored.aggressive and restored.previous_mi == 1.1  # no I_q is tracked once aggressive is off


def test_text_rule_compares_epoch_0_with_zero_as_the_authors_do():
    strategy, _ = _tiny_strategy()
    strategy.end_epoch({"mi": -0.02})  # a negative I_q after epoch 0 is a fall from the initial 0
    assert not strategy.aggressive
    strategy, _ = _tiny_strategy()
    strategy.end_epoch({"mi": 0.0})  # equal is not a fall
    assert strategy.aggressive


def test_joint_strategy_has_no_aggressive_state():
    strategy, _ = _tiny_strategy()
    joint = JointStrategy(strategy.model, strategy.enc_opt, strategy.dec_opt, 5.0)
    assert not joint.aggressive and joint.step(torch.randint(4, 12, (4, 6)), 1.0).inner_steps == 0


def test_linear_anneal_rises_from_start_to_one_then_holds():
    assert linear_anneal(0, 0.1, 100) == 0.1
    assert abs(linear_anneal(50, 0.1, 100) - 0.55) < 1e-12
    assert linear_anneal(100, 0.1, 100) == 1.0
    assert linear_anneal(10_000, 0.1, 100) == 1.0
    assert linear_anneal(0, 1.0, 100) == 1.0


def test_plateau_halving_waits_for_min_epoch_and_patience_then_stops():
    rule = PlateauHalving(lr=1.0, factor=0.5, patience=2, min_epoch=3, max_decays=2)
    decisions = [rule.update(epoch, loss) for epoch, loss in enumerate([10, 9, 9.5, 9.5, 9.5, 8, 8.5, 8.5])]
    assert [d.improved for d in decisions] == [True, True, False, False, False, True, False, False]
    # epoch 2 is the 1st bad epoch, epoch 3 the 2nd (and >= min_epoch): decay; patience restarts
    assert [d.decay for d in decisions] == [False, False, False, True, False, False, False, True]
    assert [d.stop for d in decisions][-1] and rule.lr == 0.25 and rule.decays == 2


class _RecordingBar:
    """Stands in for tqdm: records every refresh and the postfix it showed."""

    shown: list[dict] = []

    def __init__(self, *args, **kwargs) -> None:
        self.n = 0
        self.postfix: dict = {}

    def set_postfix(self, postfix, refresh=True) -> None:
        self.postfix = dict(postfix)

    def update(self, n) -> None:
        self.n += n

    def refresh(self) -> None:
        _RecordingBar.shown.append(self.postfix)

    def close(self) -> None:
        pass


def _progress_trainer(tmp_path, method: str):
    from lagvae.experiments.presets import make_config
    from lagvae.training.loop import Trainer

    overrides = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "eval.posterior_points=0"]
    config = make_config("synthetic", method, overrides=overrides)
    config.threads = 1
    return Trainer(config, tmp_path / method)


def test_progress_refreshes_by_the_clock_not_by_step_count(tmp_path, monkeypatch):
    import lagvae.training.epoch as epoch

    monkeypatch.setattr(epoch, "tqdm", _RecordingBar)
    trainer = _progress_trainer(tmp_path, "vae")
    trainer.clock = lambda: 0.0  # time stands still: one refresh, at the end of the epoch (4 steps)
    _RecordingBar.shown = []
    trainer.train_epoch(0)
    assert len(_RecordingBar.shown) == 1
    ticks = iter(range(0, 10_000, 3))  # 3 s pass between any two looks at the clock: every step refreshes
    trainer.clock = lambda: float(next(ticks))
    _RecordingBar.shown = []
    trainer.train_epoch(1)
    assert len(_RecordingBar.shown) == 4


def test_progress_shows_inner_steps_as_they_happen(tmp_path, monkeypatch):
    import lagvae.training.epoch as epoch

    monkeypatch.setattr(epoch, "tqdm", _RecordingBar)
    trainer = _progress_trainer(tmp_path, "aggressive")
    ticks = iter(range(0, 100_000, 3))
    trainer.clock = lambda: float(next(ticks))
    _RecordingBar.shown = []
    trainer.train_epoch(0)
    live = [p["inner"] for p in _RecordingBar.shown if p["inner"].endswith("now")]
    assert live[:3] == ["1 now", "2 now", "3 now"]  # the first outer step's encoder-only steps, one by one


def test_lr_decay_inside_fit_reloads_the_best_weights_and_clears_the_optimiser_state(tmp_path, monkeypatch):
    import lagvae.training.loop as loop
    from lagvae.experiments.presets import make_config

    overrides = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "eval.posterior_points=0"]
    overrides += ["train.lr_decay_min_epoch=0", "train.lr_patience=1", "train.momentum=0.5", "train.epochs=2"]
    config = make_config("synthetic", "vae", overrides=overrides)
    config.threads, config.progress = 1, False
    scripted = iter([-10.0, -20.0])  # validation ELBO: epoch 1 is worse, so with patience 1 the rate decays
    real = loop.evaluate

    def scripted_validation(model, batches, *args, **kwargs):
        out = real(model, batches, *args, **kwargs)
        if not args:  # validation; the test passes iw_samples
            out["elbo"] = next(scripted)
        return out

    monkeypatch.setattr(loop, "evaluate", scripted_validation)
    trainer = loop.Trainer(config, tmp_path / "run")
    trainer.fit()
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == 0
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, best["model"][name]), name  # epoch 1's weights were discarded
    assert all(not opt.state for opt in trainer.strategy.optimizers())  # momentum of discarded weights cleared
    assert trainer.lr_rule.lr == 0.5
    assert {g["lr"] for opt in trainer.strategy.optimizers() for g in opt.param_groups} == {0.5}
