"""The synthetic generator and the text batching layer."""

from __future__ import annotations

import torch

from lagvae.config import DataConfig, ModelConfig
from lagvae.data import build_data
from lagvae.data.synthetic import generate_synthetic
from lagvae.data.text import BOS_ID, EOS_ID, TextSet, Vocab
from lagvae.models import build_model


def test_synthetic_generator_is_deterministic_for_a_seed():
    a, za = generate_synthetic(50, seed=7)
    b, zb = generate_synthetic(50, seed=7)
    c, _ = generate_synthetic(50, seed=8)
    assert torch.equal(a, b) and torch.equal(za, zb)
    assert not torch.equal(a, c)
    assert a.shape == (50, 10) and int(a.min()) >= 0 and int(a.max()) < 1000


def test_synthetic_sentences_depend_on_z():
    # Sentences from nearby latents share far more tokens than sentences from opposite mixture components.
    tokens, z = generate_synthetic(2000, seed=1)
    quadrant = (z[:, 0] > 0).long() * 2 + (z[:, 1] > 0).long()
    hist = torch.stack([torch.bincount(tokens[quadrant == q, 1:].flatten(), minlength=1000) for q in range(4)]).float()
    hist = hist / hist.sum(1, keepdim=True)
    overlap = (hist.unsqueeze(0).minimum(hist.unsqueeze(1))).sum(-1)  # histogram intersection
    off_diagonal = overlap[~torch.eye(4, dtype=torch.bool)]
    assert float(off_diagonal.max()) < 0.6


def test_synthetic_splits_have_the_papers_sizes_and_markers():
    splits = build_data(DataConfig(n_train=160, n_val=20, n_test=20))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (160, 20, 20)
    t = splits.train.tokens
    assert t.shape[1] == 12 and bool((t[:, 0] == BOS_ID).all()) and bool((t[:, -1] == EOS_ID).all())
    assert len(splits.vocab) == 1004
    assert len(build_data(DataConfig(n_train=160, n_val=20, n_test=20, train_limit=50)).train) == 50


def test_vocab_round_trip_and_unknown_words(tmp_path):
    vocab = Vocab(["the", "cat"])
    ids = vocab.encode(["the", "dog", "cat"])
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and ids[2] == vocab.stoi["<unk>"]
    assert vocab.decode(ids) == ["the", "<unk>", "cat"]
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == vocab.itos


def _mixed_lengths() -> TextSet:
    gen = torch.Generator().manual_seed(0)
    return TextSet.from_ids(
        [[BOS_ID, *torch.randint(4, 20, (n,), generator=gen).tolist(), EOS_ID] for n in (3, 7, 3, 5, 7, 2, 5, 9)]
    )


def test_padding_never_counts_in_the_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(8, 8, 8, 2, 0.0, 0.0), vocab_size=20).eval()
    data = _mixed_lengths()
    z = torch.randn(len(data), 3, 2)
    with torch.no_grad():
        padded = model.log_prob(data.tokens, z)
        mu_padded, _ = model.encode(data.tokens)
        for i in range(len(data)):
            alone = data.tokens[i : i + 1, : int(data.lengths[i])]
            torch.testing.assert_close(padded[i : i + 1], model.log_prob(alone, z[i : i + 1]))
            torch.testing.assert_close(mu_padded[i : i + 1], model.encode(alone)[0])
    # tokens predicted: everything after <s>, </s> included, padding excluded
    assert int(model.n_units(data.tokens)) == int((data.lengths - 1).sum())
