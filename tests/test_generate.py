"""Decoding: greedy is beam search of width 1, a wide beam finds the exact best sequence; the sentence API."""

from __future__ import annotations

import itertools

import pytest
import torch

from lagvae.config import LagvaeError, ModelConfig
from lagvae.data.text import BOS_ID, EOS_ID, UNK_ID, Vocab
from lagvae.generate import (
    Decoding,
    decode,
    decode_sentences,
    encode_sentences,
    interpolate_sentences,
    interpolation_latents,
    reconstruct_sentences,
)
from lagvae.models import build_model


def _model(vocab: int = 6):
    torch.manual_seed(3)
    model = build_model(ModelConfig(8, 8, 8, 2, 0.0, 0.0), vocab_size=vocab)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(60.0)  # sharpen the random decoder so sequences differ in probability
    return model.eval()


def _score(model, z: torch.Tensor, tokens: list[int]) -> float:
    """log p(tokens | z) with <pad>/<s> excluded, as the decoders see it."""
    x = torch.tensor([[BOS_ID, *tokens]])
    logits, _ = model.decoder.step_logits(x[:, :-1], z.unsqueeze(0), None)
    logits[..., 0] = float("-inf")
    logits[..., BOS_ID] = float("-inf")
    return float(torch.log_softmax(logits, -1).gather(-1, x[:, 1:].unsqueeze(-1)).sum())


def test_beam_of_width_one_is_greedy():
    model = _model(12)
    z = torch.randn(5, 2)
    assert decode(model, z, 8, "beam", beam=1) == decode(model, z, 8, "greedy")


def test_wide_beam_finds_the_exact_argmax():
    model = _model()
    allowed = [EOS_ID, UNK_ID, 4, 5]
    length = 3
    for z in torch.randn(4, 2):
        candidates = [list(s) for n in range(1, length + 1) for s in itertools.product(allowed, repeat=n)]
        # a sequence ends at its first </s>, or runs to the length limit without one
        candidates = [c for c in candidates if EOS_ID not in c[:-1] and (c[-1] == EOS_ID or len(c) == length)]
        with torch.no_grad():
            best = max(candidates, key=lambda c: _score(model, z, c))
        found = decode(model, z.unsqueeze(0), length, "beam", beam=64)[0]
        expected = best[:-1] if best[-1] == EOS_ID else best
        assert found == expected


def test_sampling_follows_the_temperature():
    model = _model(12)
    z = torch.zeros(400, 2)
    torch.manual_seed(0)
    cold = decode(model, z, 1, "sample", temperature=0.01)
    hot = decode(model, z, 1, "sample", temperature=5.0)
    assert len({tuple(c) for c in cold}) == 1 and cold[0] == decode(model, z[:1], 1, "greedy")[0]
    assert len({tuple(h) for h in hot}) > 3


def test_interpolation_runs_between_the_two_means():
    a, b = torch.tensor([0.0, 2.0]), torch.tensor([4.0, -2.0])
    path = interpolation_latents(a, b, 5)
    assert path.shape == (5, 2) and torch.equal(path[0], a) and torch.equal(path[-1], b)
    torch.testing.assert_close(path[2], (a + b) / 2)


def test_sentence_api_encodes_decodes_and_interpolates_between_the_two_posterior_means():
    vocab = Vocab(["the", "cat", "sat", "dog"])
    model = _model(len(vocab))
    mu, _ = encode_sentences(model, vocab, ["5\tthe cat sat", "the dog"])
    mu_plain, _ = encode_sentences(model, vocab, ["the cat sat"])
    assert torch.allclose(mu[0], mu_plain[0])  # the label<TAB> prefix is ignored
    how = Decoding(max_len=6)
    path = interpolate_sentences(model, vocab, "the cat sat", "the dog", 4, how)
    assert len(path) == 4 and path[0] == decode_sentences(model, vocab, mu[:1], how)[0]
    assert path[-1] == reconstruct_sentences(model, vocab, ["the dog"], how=how)[0]
    assert set(" ".join(path).split()) <= set(vocab.itos[3:])
    with pytest.raises(LagvaeError, match="empty sentence"):
        encode_sentences(model, vocab, ["the cat", "   "])
