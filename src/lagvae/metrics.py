"""Collapse diagnostics: IW-NLL, perplexity, KL, mutual information I_q, active units, and the batched evaluator."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from lagvae import draws
from lagvae.distributed import World
from lagvae.draws import Rows
from lagvae.inference import Posterior, amortized
from lagvae.models.vae import VAE
from lagvae.objectives import gaussian_kl, iw_bound, log_importance_weights, log_normal, reparameterize


def iw_log_likelihood(
    model: VAE,
    x: Tensor,
    k: int,
    max_memory_mb: float = 512,
    q: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Tensor:
    """log p(x) >= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x); decoded in memory-bounded chunks.

    `q` is (mu, logvar) of q(z|x), the encoder's when not given. `on_chunk` (a progress display) is called
    after each chunk with the (example, sample) pairs it decoded."""
    mu, logvar = q if q is not None else model.encode(x)
    if mu.shape[-1] == 0:  # no latent (lm, pixelcnn): every weight is p(x), so one sample is exact
        k = 1
    if x.shape[0] > 1 and sample_bytes(model, x) > max_memory_mb * 2**20:
        half = x.shape[0] // 2  # even one sample of the whole batch does not fit: split the batch
        parts = [(x[:half], mu[:half], logvar[:half]), (x[half:], mu[half:], logvar[half:])]
        return torch.cat(
            [iw_log_likelihood(model, xs, k, max_memory_mb, (m, lv), generator, on_chunk) for xs, m, lv in parts]
        )
    chunk = samples_per_chunk(model, x, k, max_memory_mb)
    log_w = []
    for start in range(0, k, chunk):
        z = reparameterize(mu, logvar, min(chunk, k - start), generator)
        log_w.append(log_importance_weights(model.log_prob(x, z), z, mu, logvar))
        if on_chunk is not None:
            on_chunk(x.shape[0] * z.shape[1])
    return iw_bound(torch.cat(log_w, dim=1))


# A chunk also holds at most this many decoded values (batch x samples x positions). It was meant for speed,
# but benchmarks/bench_kernels.py finds 5 to 250 samples a chunk within noise of each other (synthetic 18.7-21.3
# ms per sentence, PTB --size cpu 327-341), so it only keeps the working set small.
MAX_CHUNK_VALUES = 1 << 14


def sample_bytes(model: VAE, x: Tensor) -> int:
    """No-grad working memory of decoding one latent sample for all of x, as the decoder states it
    (`sample_bytes`); a decoder that does not is assumed to need 64 bytes per input value."""
    stated = getattr(model.decoder, "sample_bytes", None)
    return int(stated(x)) if stated is not None else 64 * x.numel()


def samples_per_chunk(model: VAE, x: Tensor, k: int, max_memory_mb: float) -> int:
    """How many of the K samples of the whole batch x to decode at once within `max_memory_mb` of working memory.

    At least one sample is decoded, whatever the budget (iw_log_likelihood splits a batch whose single sample
    does not fit).
    """
    by_memory = int(max_memory_mb * 2**20 // max(sample_bytes(model, x), 1))
    return max(1, min(k, by_memory, MAX_CHUNK_VALUES // max(x.numel(), 1)))


def mutual_information(mu: Tensor, logvar: Tensor, z: Tensor | None = None) -> Tensor:
    """I_q(x;z) = E_x[KL(q(z|x) || p(z))] - KL(q(z) || p(z)) = E_x E_q(z|x)[log q(z|x) - log q(z)].

    q(z) is the aggregate posterior of the given examples, (1/N) sum_n q(z|x_n), evaluated at one sample
    z_n ~ q(z|x_n) per example (the paper's estimator). log q(z) counts z_n's own component, so the
    estimate is biased and bounded by log N; near 0 its Monte Carlo noise can make it slightly negative.
    """
    n, d = mu.shape
    if z is None:
        z = reparameterize(mu, logvar, 1).squeeze(1)
    neg_entropy = (-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)).mean()
    log_density = log_normal(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))  # [z_n, x_m]
    log_qz = torch.logsumexp(log_density, dim=1) - math.log(n)
    return neg_entropy - log_qz.mean()


# entries of the [chunk, N] matrix of log N(z_n; mu_m, var_m) that mutual_information_full holds at once
MI_CHUNK_VALUES = 1 << 22


def mutual_information_full(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """I_q(x;z) = E_x E_q(z|x)[log q(z|x) - log q(z)], q(z) = (1/N) sum_m q(z|x_m) over all N given examples.

    The paper's estimator (`mutual_information`) on the whole split instead of one minibatch, so its bound is
    log N, not log B. One z_n ~ q(z|x_n) per example, drawn from `generator` (on the CPU) so the caller's
    random stream is untouched. log q(z_n|x_n) is taken at that sample, not as the analytic entropy, so its
    noise cancels against log q(z_n)'s: identical posteriors (a collapsed encoder) give exactly 0. The N x N
    log densities are two matrix products per row chunk (in float64,
    as the expanded square cancels), so memory stays at MI_CHUNK_VALUES entries whatever N.
    """
    n, d = mu.shape
    if n == 0 or d == 0:
        return torch.zeros((), dtype=torch.float64)
    mu, logvar = mu.double(), logvar.double()
    eps = torch.randn(n, d, generator=generator, dtype=torch.float64).to(mu.device)
    z = mu + (0.5 * logvar).exp() * eps
    precision = (-logvar).exp()  # [N, D]
    # log N(z; mu_m, var_m) = -1/2 (z^2 . p_m - 2 z . (mu p)_m + c_m), c_m = sum_d mu^2 p + logvar + log 2 pi
    const = (mu.pow(2) * precision + logvar).sum(-1) + d * math.log(2 * math.pi)
    log_qz = []
    for part in z.split(max(1, MI_CHUNK_VALUES // n)):
        log_density = -0.5 * (part.pow(2) @ precision.T - 2 * part @ (mu * precision).T + const)
        log_qz.append(torch.logsumexp(log_density, dim=1))
    log_qz_x = -0.5 * (eps.pow(2) + logvar).sum(-1) - 0.5 * d * math.log(2 * math.pi)
    return (log_qz_x - torch.cat(log_qz) + math.log(n)).mean()


def full_split_mi(mu: Tensor, logvar: Tensor, max_examples: int, seed: int = 0) -> tuple[float, int]:
    """(mi_full, examples used): `mutual_information_full` over every example, or over a seeded subsample of
    `max_examples` of them when there are more."""
    generator = torch.Generator().manual_seed(seed)
    if mu.shape[0] > max_examples > 0:
        keep = torch.randperm(mu.shape[0], generator=generator)[:max_examples].to(mu.device)
        mu, logvar = mu[keep], logvar[keep]
    return float(mutual_information_full(mu, logvar, generator)), int(mu.shape[0])


def active_units(mu: Tensor, threshold: float = 0.01) -> Tensor:
    """AU = #{d : Cov_x(E_q(z|x)[z_d]) > threshold}, from encoder means mu [N, D]."""
    if mu.shape[0] < 2 or mu.shape[1] == 0:
        return torch.zeros((), dtype=torch.long)
    return (mu.var(dim=0, unbiased=True) > threshold).sum()


def perplexity(total_nll: float, n_tokens: int) -> float:
    """PPL = exp(sum_x -log p(x) / #tokens), tokens counting </s> but not <s>; inf when that overflows."""
    per_token = total_nll / n_tokens
    return math.exp(per_token) if per_token < 700 else float("inf")


@torch.no_grad()
def evaluate(
    model: VAE,
    batches: Iterable[Tensor | tuple[Tensor, Rows | None]],
    iw_samples: int = 0,
    max_memory_mb: float = 512,
    world: World | None = None,
    iw_generator: torch.Generator | None = None,
    mi_full_max: int = 10_000,
    posterior: Posterior = amortized,
    nll_examples: list[Tensor] | None = None,
    on_iw_chunk: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Per-example means of elbo, rec, kl, mi (per-minibatch aggregate, size-weighted) and au over all batches.

    With iw_samples > 0 also nll (IW bound with K = iw_samples, decoded within max_memory_mb); `ppl` uses nll
    when present, else -elbo.
    Everything is at KL weight 1, under `posterior` (the encoder's q, or SA-VAE's refined one). The model is
    put in eval mode (no dropout) and restored afterwards.

    Sharded over processes (`world`, batches of (this rank's rows, Rows)), every rank gathers each global
    batch's posterior parameters, so KL, I_q (whose aggregate posterior is the global minibatch's, as in
    one process) and AU (over every example's mean) are the one-process numbers; reconstruction, IW and
    unit counts are summed over the ranks. The IW samples then come from `iw_generator`, this rank's own
    stream, so the shared stream that keeps the ranks' other draws equal is left alone.

    `mi_full` is I_q with the whole split's aggregate posterior (or a seeded subsample of `mi_full_max`
    examples, their number in `mi_full_n`), from its own seeded stream (0 turns it off).
    With iw_samples > 0, `nll_examples` (when given) receives each global batch's per-example -log p(x), and
    `on_iw_chunk` is iw_log_likelihood's `on_chunk` (the IW test's progress, which can take hours).
    """
    was_training = model.training
    model.eval()
    sums = {"rec": 0.0, "kl": 0.0, "mi": 0.0, "nll": 0.0}
    n = 0
    units = 0
    mus, logvars = [], []
    for item in batches:
        x, rows = item if isinstance(item, tuple) else (item, None)
        with draws.sharded(rows):
            mu, logvar = posterior(model, x)
            z = reparameterize(mu, logvar, 1)
        rec = -model.log_prob(x, z).squeeze(1)
        sums["rec"] += float(rec.sum())
        mu_all, logvar_all = mu, logvar
        if world is not None and rows is not None:
            d = mu.shape[1]
            mu_all, logvar_all = world.gather_rows(torch.cat([mu, logvar], dim=1), rows).split(d, dim=1)
        b = mu_all.shape[0]
        sums["kl"] += float(gaussian_kl(mu_all, logvar_all).sum())
        sums["mi"] += float(mutual_information(mu_all, logvar_all)) * b
        if iw_samples > 0:
            log_px = iw_log_likelihood(model, x, iw_samples, max_memory_mb, (mu, logvar), iw_generator, on_iw_chunk)
            sums["nll"] += float(-log_px.sum())
            if nll_examples is not None:
                nll_examples.append(-(world.gather_rows(log_px, rows) if world is not None else log_px))
        mus.append(mu_all)
        logvars.append(logvar_all)
        n += b
        units += int(model.n_units(x))
    model.train(was_training)
    if world is not None and world.distributed:
        local = torch.tensor([sums["rec"], sums["nll"], float(units)], dtype=torch.float64)
        sums["rec"], sums["nll"], total_units = world.all_reduce_(local).tolist()
        units = int(total_units)
    out = {key: value / n for key, value in sums.items()}
    out["elbo"] = -(out["rec"] + out["kl"])
    out["au"] = int(active_units(torch.cat(mus)))
    if mi_full_max > 0:
        out["mi_full"], out["mi_full_n"] = full_split_mi(torch.cat(mus), torch.cat(logvars), mi_full_max)
    out["n"] = n
    total = out["nll"] if iw_samples > 0 else -out["elbo"]
    out["ppl"] = perplexity(total * n, units)
    if iw_samples <= 0:
        del out["nll"]
    return out
