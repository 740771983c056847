"""Generation: latents from the prior, text decoded from latents (greedy, beam, sampling), image samples and
reconstructions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lagvae.config import RunConfig
from lagvae.data.text import BOS_ID, EOS_ID, PAD_ID, TextSet, Vocab, strip_ids
from lagvae.errors import LagvaeError
from lagvae.inference import Posterior, amortized
from lagvae.models.vae import VAE

DECODERS = ("greedy", "beam", "sample")
log = logging.getLogger("lagvae")


@dataclass(frozen=True)
class Decoding:
    """How latents become text: greedy, beam (width `beam`) or sampling at `temperature`, up to `max_len` tokens."""

    method: str = "greedy"
    beam: int = 5
    temperature: float = 1.0
    max_len: int = 50


def _next_token_logits(logits: Tensor) -> Tensor:
    """Last-step logits with <pad> and <s> ruled out: neither may be generated."""
    logits = logits[:, -1].clone()
    logits[:, PAD_ID] = float("-inf")
    logits[:, BOS_ID] = float("-inf")
    return logits


@torch.no_grad()
def decode(
    model: VAE,
    z: Tensor,
    max_len: int = 50,
    method: str = "greedy",
    beam: int = 5,
    temperature: float = 1.0,
) -> list[list[int]]:
    """Token ids (without <s>/</s>) for each latent in z [N, D]."""
    if method not in DECODERS:
        raise ValueError(f"unknown decoding {method!r}; choose from {', '.join(DECODERS)}")
    was_training = model.training
    model.eval()
    try:
        if method == "beam":
            return _beam(model, z, max_len, beam)
        return _stepwise(model, z, max_len, sample=method == "sample", temperature=temperature)
    finally:
        model.train(was_training)


def _stepwise(model: VAE, z: Tensor, max_len: int, sample: bool, temperature: float) -> list[list[int]]:
    n = z.shape[0]
    token = torch.full((n, 1), BOS_ID, dtype=torch.long, device=z.device)
    state = None
    out = torch.full((n, max_len), PAD_ID, dtype=torch.long, device=z.device)
    done = torch.zeros(n, dtype=torch.bool, device=z.device)
    for t in range(max_len):
        logits, state = model.decoder.step_logits(token, z, state)
        logits = _next_token_logits(logits)
        if sample:
            token = torch.multinomial(torch.softmax(logits / temperature, -1), 1)
        else:
            token = logits.argmax(-1, keepdim=True)
        out[:, t] = token.squeeze(1).masked_fill(done, PAD_ID)
        done |= token.squeeze(1) == EOS_ID
        if bool(done.all()):
            break
    return [strip_ids(row) for row in out.tolist()]


def _beam(model: VAE, z: Tensor, max_len: int, width: int) -> list[list[int]]:
    """Beam search per latent, all beams batched: beams [N, k] with summed log-probs; finished beams stay put."""
    n, device = z.shape[0], z.device
    zk = z.repeat_interleave(width, 0)
    token = torch.full((n * width, 1), BOS_ID, dtype=torch.long, device=device)
    scores = torch.full((n, width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # start from one live beam so duplicates do not fill the beam
    history = torch.zeros(n * width, 0, dtype=torch.long, device=device)
    finished = torch.zeros(n * width, dtype=torch.bool, device=device)
    state = None
    for _ in range(max_len):
        logits, state = model.decoder.step_logits(token, zk, state)
        logp = torch.log_softmax(_next_token_logits(logits), -1)
        vocab = logp.shape[-1]
        # a finished beam may only extend with <pad> at no cost
        logp = torch.where(finished.unsqueeze(1), torch.full_like(logp, float("-inf")), logp)
        logp[:, PAD_ID] = torch.where(finished, 0.0, float("-inf"))
        total = (scores.view(-1, 1) + logp).view(n, width * vocab)
        scores, flat = total.topk(width, dim=-1)
        parent = (flat // vocab) + torch.arange(n, device=device).unsqueeze(1) * width
        parent = parent.view(-1)
        token = (flat % vocab).view(-1, 1)
        history = torch.cat([history[parent], token], dim=1)
        state = tuple(s[:, parent] for s in state)
        finished = finished[parent] | (token.squeeze(1) == EOS_ID)
        if bool(finished.all()):
            break
    best = scores.argmax(-1) + torch.arange(n, device=device) * width
    return [strip_ids(row) for row in history[best].tolist()]


def _device(model: VAE) -> torch.device:
    return next(model.parameters()).device


def prior_latents(n: int, latent_dim: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """n latents z ~ p(z) = N(0, I), [n, latent_dim], on `device`: from `generator` (a CPU one) when given,
    else from the global RNG on `device`."""
    if generator is None:
        return torch.randn(n, latent_dim, device=device)
    return torch.randn(n, latent_dim, generator=generator).to(device)


def sample_sentences(model: VAE, vocab: Vocab, n: int, latent_dim: int, how: Decoding = Decoding()) -> list[str]:
    """n sentences decoded from z ~ p(z), drawn from the global RNG (seed it for a reproducible sample)."""
    return decode_sentences(model, vocab, prior_latents(n, latent_dim, _device(model)), how)


def interpolation_latents(mu_a: Tensor, mu_b: Tensor, steps: int) -> Tensor:
    """z_t = (1 - t) mu_a + t mu_b for t evenly spaced in [0, 1], `steps` points (ends included)."""
    t = torch.linspace(0.0, 1.0, steps, device=mu_a.device).unsqueeze(1)
    return (1 - t) * mu_a + t * mu_b


@torch.no_grad()
def encode_sentences(
    model: VAE, vocab: Vocab, lines: list[str], posterior: Posterior = amortized
) -> tuple[Tensor, Tensor]:
    """The posterior (mu, logvar) [N, D] of whitespace-tokenised lines (a `label<TAB>` prefix is dropped);
    `posterior` is the run's (build_posterior: SA-VAE runs refine the encoder's)."""
    docs = [line.split("\t", 1)[-1].split() for line in lines]
    if not docs or not all(docs):
        raise LagvaeError("empty sentence given; every input needs at least one token")
    for number, doc in enumerate(docs, 1):
        if not any(word in vocab.stoi for word in doc):
            log.warning(
                f"input {number} ({' '.join(doc)[:40]!r}) has no word of the vocabulary: it reads as <unk> only"
            )
    tokens = TextSet.from_ids([vocab.encode(d) for d in docs]).tokens
    return posterior(model, tokens.to(_device(model)))


def decode_sentences(model: VAE, vocab: Vocab, z: Tensor, how: Decoding = Decoding()) -> list[str]:
    """Decode each latent in z [N, D] (prior draws, posterior means) to a string; says so when any was cut."""
    ids = decode(model, z, how.max_len, how.method, how.beam, how.temperature)
    cut = sum(len(row) >= how.max_len for row in ids)
    if cut:
        log.warning(f"{cut} of {len(ids)} outputs reached the length cap {how.max_len} without </s> and were cut")
    return [" ".join(vocab.decode(row)) for row in ids]


def reconstruct_sentences(
    model: VAE,
    vocab: Vocab,
    lines: list[str],
    sample_z: bool = False,
    how: Decoding = Decoding(),
    posterior: Posterior = amortized,
) -> list[str]:
    """Each line decoded from its posterior mean (or a posterior sample with `sample_z`)."""
    mu, logvar = encode_sentences(model, vocab, lines, posterior)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample_z else mu
    return decode_sentences(model, vocab, z, how)


def interpolate_sentences(
    model: VAE,
    vocab: Vocab,
    a: str,
    b: str,
    steps: int,
    how: Decoding = Decoding(),
    posterior: Posterior = amortized,
) -> list[str]:
    """Sentences decoded along the line between the posterior means of a and b, ends included."""
    mu, _ = encode_sentences(model, vocab, [a, b], posterior)
    return decode_sentences(model, vocab, interpolation_latents(mu[0], mu[1], steps), how)


@torch.no_grad()
def sample_images(model: VAE, z: Tensor, shape: tuple[int, int], *, seed: int = 0, progress: bool = True) -> np.ndarray:
    """Binary images [N, H, W] drawn from p(x|z) for latents z [N, D], all N at once (H*W decoder passes)."""
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator(z.device).manual_seed(seed)
        return model.decoder.sample(z, shape, generator=generator, progress=progress)[:, 0].cpu().numpy()
    finally:
        model.train(was_training)


@torch.no_grad()
def reconstruct_images(
    model: VAE,
    x: Tensor,
    *,
    sample_z: bool = False,
    seed: int = 0,
    progress: bool = True,
    posterior: Posterior = amortized,
) -> np.ndarray:
    """Inputs beside reconstructions, [2N, H, W] as x_0, r_0, x_1, r_1, ...: r_n ~ p(x | z), z the posterior
    mean of x_n (or a posterior sample with `sample_z`)."""
    was_training = model.training
    model.eval()
    try:
        mu, logvar = posterior(model, x)
        if sample_z:
            mu = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed)).to(mu)
        recon = torch.as_tensor(sample_images(model, mu, tuple(x.shape[-2:]), seed=seed, progress=progress))
        pairs = torch.stack([x[:, 0].cpu(), recon], dim=1)
        return pairs.reshape(-1, *x.shape[-2:]).numpy()
    finally:
        model.train(was_training)


def sample_image_panel(
    model: VAE, latent_dim: int, shape: tuple[int, int], *, n: int, seed: int, progress: bool
) -> tuple[np.ndarray, int]:
    """n images drawn from p(x|z), z ~ p(z) (both from `seed`), and the grid's column count."""
    z = prior_latents(n, latent_dim, _device(model), torch.Generator().manual_seed(seed))
    return np.asarray(sample_images(model, z, shape, seed=seed, progress=progress)), min(n, 10)


def reconstruction_panel(
    model: VAE,
    config: RunConfig,
    shape: tuple[int, int],
    *,
    n: int,
    input_path: Path | None,
    sample_z: bool,
    seed: int,
    progress: bool,
    posterior: Posterior = amortized,
) -> tuple[np.ndarray, np.ndarray]:
    """n inputs of an image run (from `input_path`, else the run's test split) and their reconstructions,
    [n, H, W] each, in the same order."""
    if input_path is not None:
        from lagvae.data.images import read_image_array

        probs = torch.from_numpy(read_image_array(input_path)[:n]).unsqueeze(1)
        x = torch.bernoulli(probs, generator=torch.Generator().manual_seed(seed))
    else:
        from lagvae.data import build_data

        x = build_data(config.data).test.first(n)
    if tuple(x.shape[-2:]) != shape:
        raise LagvaeError(f"input images are {tuple(x.shape[-2:])}; the run was trained on {shape}")
    images = reconstruct_images(
        model, x.to(_device(model)), sample_z=sample_z, seed=seed, progress=progress, posterior=posterior
    )
    return np.asarray(images[0::2]), np.asarray(images[1::2])
