"""Guards against silent failure: each test plants the failure and expects a loud, one-line stop or true numbers."""

from __future__ import annotations

import inspect
import io
import logging
from pathlib import Path

import pytest
import torch

from lagvae.config import DataConfig, ModelConfig, RunConfig, SAVAEConfig, TrainConfig
from lagvae.data import build_data, describe
from lagvae.draws import Rows, sharded
from lagvae.errors import NonFiniteLossError
from lagvae.experiments.presets import make_config
from lagvae.inference import Refined, svi_refine
from lagvae.models import build_model
from lagvae.objectives import gaussian_kl
from lagvae.training.build import build_posterior
from lagvae.training.flat_grads import FlatGrads, GradientsUnbound
from lagvae.training.savae import SemiAmortizedStrategy, svi_options
from lagvae.training.strategies import JointStrategy
from tests.conftest import linear_gaussian_vae

FIXTURE_CORPUS = Path(__file__).parent / "fixtures" / "corpus"
# The tiny synthetic run of every run-level test here: seconds, not minutes.
TINY = ["data.n_train=100", "data.n_val=32", "data.n_test=16", "eval.posterior_points=0", "eval.iw_samples=4"]
TINY += ["data.train_limit=48"]


def _tiny_config(*overrides: str) -> RunConfig:
    config = make_config("synthetic", "vae", overrides=[*TINY, *overrides])
    config.threads, config.progress = 1, False
    return config


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- the flat gradient buffer --------------------------------------------------------------------------------
def _joint() -> tuple[JointStrategy, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(8, 8, 8, 2, 0.0, 0.0), vocab_size=12)
    enc = torch.optim.SGD(model.encoder.parameters(), lr=0.1)
    dec = torch.optim.SGD(model.decoder.parameters(), lr=0.1)
    return JointStrategy(model, enc, dec, 5.0), enc, torch.randint(4, 12, (4, 6))


@pytest.mark.parametrize("unbind", ["zero_grad", "grad_none"])
def test_an_unbound_gradient_buffer_stops_the_step_with_one_line(unbind):
    strategy, enc, x = _joint()
    strategy.step(x, 1.0)  # bound: fine
    if unbind == "zero_grad":
        enc.zero_grad()  # PyTorch's default set_to_none=True
    else:
        next(iter(strategy.model.decoder.parameters())).grad = None
    with pytest.raises(GradientsUnbound) as err:
        strategy.step(x, 1.0)
    assert "zero_grad" in _one_line(err) and "FlatGrads.zero_()" in str(err.value)


def test_unbinding_between_the_zeroing_and_the_clip_is_caught_at_the_clip_and_the_all_reduce():
    strategy, enc, x = _joint()
    grads = FlatGrads(strategy.model.encoder, strategy.model.decoder)
    grads.zero_()
    enc.zero_grad(set_to_none=False)  # zeroes in place: the views stay bound
    strategy.model.loss_terms(x)[0].mean().backward()
    assert float(grads.clip_(5.0)) > 0
    grads.zero_()
    enc.zero_grad()
    strategy.model.loss_terms(x)[0].mean().backward()
    with pytest.raises(GradientsUnbound):
        grads.clip_(5.0)
    with pytest.raises(GradientsUnbound):
        _ = grads.buffer  # what the all-reduce is given


# ---- no non-finite checkpoint --------------------------------------------------------------------------------
def test_a_nan_step_never_reaches_last_pt(tmp_path, monkeypatch):
    from lagvae.training import checkpoint
    from lagvae.training.loop import Trainer

    # A checkpoint falls due after every step, and the progress display (whose look at the loss was the
    # only finite check in one process) never: the fake clock moves 10 ms a look, 2 s refresh.
    config = _tiny_config("train.batch_size=8", "train.epochs=1", "train.checkpoint_minutes=1e-5")
    trainer = Trainer(config, tmp_path / "run")
    ticks = iter(range(10**6))
    trainer.clock = lambda: 0.01 * next(ticks)
    written: list[bytes] = []
    real_save = checkpoint.save_atomic

    def recording_save(obj, path):  # type: ignore[no-untyped-def]
        real_save(obj, path)
        if path.name == "last.pt":
            written.append(path.read_bytes())

    monkeypatch.setattr(checkpoint, "save_atomic", recording_save)
    real_terms, calls = trainer.model.loss_terms, []

    def nan_at_step_3(x, n_samples=1):  # type: ignore[no-untyped-def]
        calls.append(1)
        rec, kl = real_terms(x, n_samples)
        return (rec * float("nan"), kl) if len(calls) == 3 else (rec, kl)

    monkeypatch.setattr(trainer.model, "loss_terms", nan_at_step_3)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    saved = [torch.load(io.BytesIO(data), weights_only=True) for data in written]
    assert all(bool(torch.isfinite(w).all()) for ckpt in saved for w in ckpt["model"].values())
    assert [ckpt["state"]["step"] for ckpt in saved][-2:] == [1, 2]  # none after the NaN step
    assert (tmp_path / "run" / "last.pt").read_bytes() == written[-1]  # step 2's, untouched
    assert "non-finite" in _one_line(err) and "at step 3" in str(err.value)


# ---- SA-VAE: the config is the one source of its numbers -----------------------------------------------------
def _svi_setup(rows: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    vae, _ = linear_gaussian_vae(seed=5)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 3, generator=gen)
    mu0, logvar0 = torch.randn(rows, 2, generator=gen), torch.randn(rows, 2, generator=gen) * 0.1
    eps = torch.randn(rows, 2, generator=gen)
    return vae, x, mu0, logvar0, eps


def test_svi_steps_with_the_size_of_the_batch_it_refines_not_train_batch_size():
    # One SVI step without momentum or a biting clip: mu_1 = mu_0 + (svi_lr / B) grad_mu ELBO(x_i), B the
    # size of the batch refined: 5 here (an epoch's short last batch), where train.batch_size is 8.
    svi = SAVAEConfig(steps=1, lr=0.7, momentum=0.0, max_grad_norm=1e9)
    train = TrainConfig(strategy="savae", batch_size=8, savae=svi)
    vae, x, mu0, logvar0, eps = _svi_setup(5)
    mu, logvar = mu0.clone().requires_grad_(), logvar0.clone().requires_grad_()
    z = (mu + (0.5 * logvar).exp() * eps).unsqueeze(1)
    (g_mu,) = torch.autograd.grad((vae.log_prob(x, z).squeeze(1) - gaussian_kl(mu, logvar)).sum(), mu)
    expected = mu0 + 0.7 / 5 * g_mu
    refined, _ = svi_refine(vae, x, mu0, logvar0, **svi_options(train), noise=[eps])
    torch.testing.assert_close(refined, expected)
    # Under several processes this rank holds rows 0:3 of the same global batch of 5: the step is still 1/5
    with sharded(Rows(0, 3, 5)):
        shard, _ = svi_refine(vae, x[:3], mu0[:3], logvar0[:3], **svi_options(train), noise=[eps[:3]])
    torch.testing.assert_close(shard, expected[:3])


def test_svi_has_no_numbers_of_its_own_every_train_svi_field_reaches_it():
    required = ("steps", "lr", "momentum", "max_grad_norm", "clip")
    signature = inspect.signature(svi_refine).parameters
    assert all(signature[name].default is inspect.Parameter.empty for name in required)
    assert inspect.signature(SemiAmortizedStrategy).parameters["svi"].default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        Refined()  # type: ignore[call-arg]
    vae, _ = linear_gaussian_vae(seed=5)
    x = 30 * torch.randn(6, 3, generator=torch.Generator().manual_seed(2))  # large gradients: the clip bites

    def refined(**fields: object) -> torch.Tensor:
        torch.manual_seed(0)
        return build_posterior(RunConfig(train=TrainConfig(strategy="savae", savae=SAVAEConfig(**fields))))(vae, x)[0]  # type: ignore[arg-type]

    base = refined()
    changed = {"steps": 3, "lr": 0.5, "momentum": 0.9, "max_grad_norm": 50.0, "clip": "batch"}
    for name, value in changed.items():
        assert not torch.allclose(refined(**{name: value}), base), name


# ---- the corpus summary under a limit ------------------------------------------------------------------------
def test_corpus_summary_counts_words_and_unknowns_over_the_same_kept_documents():
    # vocabulary from the whole training file, capped at 3 words (dog, on, the): its first document
    # "the cat sat on the mat" has 3 unknown words of 6, the whole file 9 (the old -50.0% of 6 words)
    config = DataConfig(name="text", path=str(FIXTURE_CORPUS), max_vocab=3, vocab_from="all")
    config.train_limit, config.eval_limit = 1, 1
    lines = describe(build_data(config))
    assert lines[1].startswith("train: 1 documents") and "50.0% of 6 words known (3 <unk>)" in lines[1]
    assert "33.3% of 3 words known (2 <unk>)" in lines[2] and "33.3% of 3 words known (2 <unk>)" in lines[3]
    used = describe(build_data(DataConfig(name="text", path=str(FIXTURE_CORPUS), train_limit=1, eval_limit=1)))
    assert "100.0% of 6 words known (0 <unk>)" in used[1]  # the vocabulary of the one document used
    assert "66.7% of 3 words known (1 <unk>)" in used[2]  # "the cat ran": ran; "a dog sat" is not kept


def test_corpus_counts_drops_and_empty_lines_up_to_the_last_kept_document(tmp_path):
    lines = {"train": ["a b", "", "c d e f", "", "a", "", "", "b c d e"], "valid": ["a"], "test": ["b"]}
    for split, text in lines.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(text) + "\n")
    config = DataConfig(name="text", path=str(tmp_path), max_len=3, overflow="drop", vocab_from="all")
    config.train_limit = 2  # keeps "a b" and "a", read past one dropped document and two empty lines
    stats = build_data(config).stats
    assert stats["dropped"]["train"] == 1 and stats["empty_lines"]["train"] == 2
    whole = build_data(DataConfig(name="text", path=str(tmp_path), max_len=3, overflow="drop")).stats
    assert whole["dropped"]["train"] == 2 and whole["empty_lines"]["train"] == 4


# ---- a long IW test says so up front -------------------------------------------------------------------------
class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _Bar:
    """tqdm's stand-in: what the IW test's bar was told."""

    made: list[_Bar] = []

    def __init__(self, *args: object, total: int | None = None, **kwargs: object) -> None:
        self.total, self.updates = total, []
        _Bar.made.append(self)

    def update(self, n: int) -> None:
        self.updates.append(n)

    def close(self) -> None:
        pass


def test_iw_test_logs_its_estimated_time_and_its_bar_moves_per_chunk_of_samples(monkeypatch):
    from lagvae.distributed import SINGLE
    from lagvae.inference import amortized
    from lagvae.metrics import sample_bytes
    from lagvae.training import evaluation

    config = _tiny_config("eval.batch_size=8")
    splits = build_data(config.data)
    model = build_model(config.model, len(splits.vocab))
    # room for one sample of a batch of 8 but not two: the 4 samples are decoded one chunk at a time
    config.eval.max_memory_mb = 1.5 * sample_bytes(model, splits.test.first(8)) / 2**20
    monkeypatch.setattr(evaluation, "tqdm", _Bar)
    _Bar.made = []
    recorder = _Recorder()
    logger = logging.getLogger("lagvae")
    logger.addHandler(recorder)
    level = logger.level
    logger.setLevel(logging.INFO)  # as the CLI sets it (a --quiet run's earlier test may have raised it)
    try:
        evaluation.test_metrics(model, amortized, splits.test, config, SINGLE, torch.device("cpu"), True)
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    estimate = [line for line in recorder.lines if line.startswith("test: K = 4 on 16 examples, about ")]
    assert len(estimate) == 1 and "eval.iw_samples" in estimate[0] and "data.eval_limit" in estimate[0]
    (bar,) = _Bar.made
    # 2 batches of 8 examples x 4 one-sample chunks, each pair weighted by its batch's length
    w0, w1 = splits.test.batches(8, shuffle=False).batch_widths()
    assert w0 <= w1 and bar.total == 8 * (w0 + w1) * 4 and bar.updates == [8 * w0] * 4 + [8 * w1] * 4


def test_the_iw_estimate_scales_the_short_first_batch_to_the_long_ones_after_it():
    """Text tests run shortest first: a decode costing time per token must be estimated from the tokens left."""
    from lagvae.data.batches import ShardedBatches
    from lagvae.data.text import TextSet
    from lagvae.distributed import SINGLE
    from lagvae.training.evaluation import IWProgress

    config = _tiny_config("eval.iw_samples=100")
    lengths = [90] * 8 + [10] * 8 + [50] * 8  # batches of 10, 50 and 90 tokens, in that order
    test = TextSet.from_ids([[5] * n for n in lengths])
    sharded = ShardedBatches(test.batches(8, shuffle=False))
    progress = IWProgress(config, sharded, SINGLE, torch.device("cpu"), False, 0)
    # per row and token: 2 s for the posterior, 0.5 s per sample, decoded 50 samples a chunk
    clock = iter([0.0, 8 * 10 * (2 + 0.5 * 50), 8 * 10 * (2 + 0.5 * 100)])
    progress._now = lambda: next(clock)  # type: ignore[method-assign]
    recorder, logger = _Recorder(), logging.getLogger("lagvae")
    logger.addHandler(recorder)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for _ in progress.batches(sharded):
            progress.on_chunk(8 * 50)
            progress.on_chunk(8 * 50)
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    truth = 8 * (10 + 50 + 90) * (2 + 0.5 * 100)  # 62,400 s = 17 h 20 min; a count of rows alone says 3 h 28 min
    assert truth == 62_400 and recorder.lines == [
        "test: K = 100 on 24 examples, about 17 h 20 min (timed on the first batch, scaled to the whole test); "
        "eval.iw_samples or data.eval_limit cut it"
    ]
