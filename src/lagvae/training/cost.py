"""What a run will cost, said before it is paid: its first steps timed, its validations and IW test probed."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lagvae.config import RunConfig
from lagvae.data import Dataset
from lagvae.inference import Posterior
from lagvae.metrics import iw_log_likelihood, samples_per_chunk
from lagvae.models.vae import VAE
from lagvae.training.evaluation import rough_duration

HOUR = 3600.0
PROBE_EXAMPLES = 8  # test examples the decoding probe times
PROBE_REPEATS = 3
TIMED_STEPS = 3  # outer steps timed after the first (which carries one-off set-up costs)
# what cuts a run's cost, named when the estimate is above an hour
CUTS = "--size cpu, data.max_vocab, data.max_len, data.eval_limit, eval.iw_samples, --epochs"


@dataclass(frozen=True)
class DecodeCost:
    """Seconds to decode one (example, latent sample) pair, and the posterior's seconds per example (the
    encoder's, or SA-VAE's refinement), timed on the first PROBE_EXAMPLES test examples (text: scaled from
    their padded length to the split's mean length)."""

    per_pair: float
    per_example: float


def _now(device: torch.device) -> float:
    if device.type == "cuda":  # CUDA runs ahead of the host: wait for it while timing
        torch.cuda.synchronize(device)
    return time.perf_counter()


def probe_decoding(
    model: VAE, posterior: Posterior, test: Dataset, config: RunConfig, device: torch.device
) -> DecodeCost:
    """Time the IW test's work on a few test examples before training: an untrained model decodes as fast as
    a trained one. The model is in eval mode (no dropout, no BatchNorm statistics updated) and the draws come
    from forked random streams, so training goes on exactly as without the probe."""
    x = test.first(min(PROBE_EXAMPLES, len(test))).to(device)
    k = max(
        1, min(config.eval.iw_samples, samples_per_chunk(model, x, config.eval.iw_samples, config.eval.max_memory_mb))
    )
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            generator = torch.Generator(device).manual_seed(0)
            iw_log_likelihood(model, x, 1, config.eval.max_memory_mb, generator=generator)  # warm-up
            encode, decode = [], []
            for _ in range(PROBE_REPEATS):  # the fastest of a few: a busy machine's stalls are not the run's cost
                start = _now(device)
                q = posterior(model, x)
                encoded = _now(device)
                iw_log_likelihood(model, x, k, config.eval.max_memory_mb, q, generator)
                encode.append(encoded - start)
                decode.append(_now(device) - encoded)
    finally:
        model.train(was_training)
    rows = x.shape[0]
    # text: the probe's documents are padded to their longest; the split's cost follows its mean length
    lengths = getattr(test, "lengths", None)
    scale = float(lengths.float().mean()) / x.shape[-1] if lengths is not None and x.dim() == 2 else 1.0
    return DecodeCost(scale * min(decode) / (rows * k), scale * min(encode) / rows)


class StepTimer:
    """Times this process's first outer steps, leaving out the first (one-off set-up costs) unless it alone
    took SLOW_STEP seconds: from the end of the first step to the end of step 1 + TIMED_STEPS, of the epoch,
    or of the step that passes ENOUGH seconds, whichever comes first."""

    SLOW_STEP = 5.0  # a first step this long is timed alone: set-up is then a small part of it
    ENOUGH = 10.0  # seconds of timed steps that suffice

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = _now(device)
        self.steps = 0
        self.first_end = 0.0

    def step(self, epoch_over: bool) -> float | None:
        """Call after each outer step; returns the seconds per step once they are timed (then stop calling)."""
        self.steps += 1
        now = _now(self.device)
        if self.steps == 1:
            self.first_end = now
            return now - self.start if epoch_over or now - self.start >= self.SLOW_STEP else None
        if self.steps == 1 + TIMED_STEPS or epoch_over or now - self.first_end >= self.ENOUGH:
            return (now - self.first_end) / (self.steps - 1)
        return None


def cost_line(
    config: RunConfig,
    *,
    per_step: float,
    steps_left: int,
    steps_per_epoch: int,
    epochs_left: int,
    decode: DecodeCost,
    n_val: int,
    n_test: int,
    vocab: int,
    aggressive: bool,
    after_aggressive: bool = False,
) -> tuple[str, float]:
    """The cost estimate printed when a run's first steps are timed, and its total in seconds: training (the
    steps left at the timed rate), validations (one sample per example each epoch) and the IW test.
    `after_aggressive`: the estimate again once aggressive mode has ended, from the plain steps after it."""
    k = config.eval.iw_samples if config.model.latent_dim > 0 else 1
    train = per_step * steps_left
    validation = epochs_left * n_val * (decode.per_pair + decode.per_example)
    test = n_test * (k * decode.per_pair + decode.per_example) if config.eval.iw_samples > 0 else 0.0
    total = train + validation + test
    words = f", vocabulary {vocab:,}" if vocab else ""
    epochs = f", {epochs_left} epochs of {steps_per_epoch:,}" if epochs_left > 1 else ""
    note = "; aggressive steps: an upper bound, as steps after aggressive mode cost far less" if aggressive else ""
    parts = [
        f"training {rough_duration(train)} ({steps_left:,} steps{epochs}, {per_step:.3g} s each as timed{note})",
        f"validation {rough_duration(validation)} ({n_val:,} examples an epoch)",
        f"test {rough_duration(test)} (IW, K = {k:,} on {n_test:,} examples{words})",
    ]
    head = (
        "cost estimate, aggressive mode over: about {} to go" if after_aggressive else "cost estimate: about {} in all"
    )
    line = f"{head.format(rough_duration(total))}, at most: " + "; ".join(parts)
    if total > HOUR:
        line += f". Above an hour: {CUTS} cut it"
    return line, total
