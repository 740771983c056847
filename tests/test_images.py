"""Binary images: PixelCNN masks and exact likelihood, dynamic binarisation, loaders, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lagvae.cli import main
from lagvae.config import ConfigError, DataConfig, ModelConfig
from lagvae.data import build_data
from lagvae.data.corpus import default_data_root
from lagvae.data.images import box_weights, downsample, read_image_array
from lagvae.models import build_model
from lagvae.models.image import PixelCNNDecoder
from lagvae.training.aggressive import AggressiveStrategy

TINY_MODEL = ["model.channels=8", "model.enc_features=16", "model.kernels=5,3,3", "model.latent_dim=2"]


def _decoder(latent_dim: int = 2, kernels: tuple[int, ...] = (7, 5, 3, 3)) -> PixelCNNDecoder:
    torch.manual_seed(0)
    return PixelCNNDecoder(latent_dim, channels=8, kernels=kernels).eval()


@pytest.mark.parametrize("kernels", [(3,), (7, 5, 3, 3), (1, 3)])
def test_no_pixel_sees_itself_or_later_pixels(kernels):
    dec = _decoder(kernels=kernels)
    h, w = 6, 7
    gen = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((1, 1, h, w), 0.5), generator=gen)
    z = torch.randn(1, 2, generator=gen)
    # row 0 is x itself, row 1 + i is x with pixel i flipped: one batched pass checks every pixel
    flips = x.view(1, -1).repeat(h * w + 1, 1)
    idx = torch.arange(h * w)
    flips[idx + 1, idx] = 1 - flips[idx + 1, idx]
    logits = dec.logits(flips.view(-1, 1, h, w), z.expand(h * w + 1, -1)).view(h * w + 1, -1)
    changed = (logits[1:] - logits[0]).abs() > 1e-6
    for i in range(h * w):
        assert not changed[i, : i + 1].any(), f"pixel {i} leaks into logits at or before it"
    assert changed.any()  # the flips do reach later pixels


def test_no_blind_spot_every_earlier_pixel_is_seen():
    # with enough layers each logit depends on every earlier pixel (the gated design removes the blind spot)
    dec = _decoder(kernels=(3, 3, 3, 3, 3))
    h, w = 5, 5
    x = torch.zeros(1, 1, h, w, requires_grad=True)
    last = h * w - 1
    dec.logits(x, torch.randn(1, 2)).view(-1)[last].backward()
    seen = x.grad.view(-1).abs() > 0
    assert seen[:last].all() and not seen[last:].any()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # latent 0: empty z-maps
def test_latent_free_nll_is_the_sum_of_pixel_bernoulli_nlls():
    dec = _decoder(latent_dim=0)
    gen = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((3, 1, 5, 4), 0.3), generator=gen)
    logits = dec.logits(x, torch.zeros(3, 0))
    p = torch.sigmoid(logits)
    by_hand = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    assert torch.allclose(-dec.log_prob(x, torch.zeros(3, 1, 0)).squeeze(1), by_hand, atol=1e-4)
    # the IW "bound" of the latent-free model is this exact likelihood, whatever K
    model = build_model(ModelConfig(kind="image", latent_dim=0, channels=8, enc_features=8, kernels="3"), 0)
    from lagvae.metrics import iw_log_likelihood

    model.eval()
    one, many = iw_log_likelihood(model, x, 1), iw_log_likelihood(model, x, 5)
    assert torch.allclose(one, many, atol=1e-5)


def test_samples_dimension_expands_the_batch():
    dec = _decoder()
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5))
    z = torch.randn(2, 3, 2)
    out = dec.log_prob(x, z)
    assert out.shape == (2, 3)
    assert torch.allclose(out[1, 2], dec.log_prob(x[1:], z[1:, 2:]).squeeze(), atol=1e-5)
    assert int(dec.n_units(x)) == 2 * 16


def test_encoder_maps_28x28_to_gaussian_parameters():
    model = build_model(ModelConfig(kind="image", latent_dim=3, channels=8, enc_features=16, kernels="3"), 0)
    mu, logvar = model.encode(torch.zeros(4, 1, 28, 28))
    assert mu.shape == logvar.shape == (4, 3)
    blocks = [m for m in model.encoder.blocks]
    h = torch.zeros(1, 1, 28, 28)
    sizes = []
    for block in blocks:
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [14, 7, 4]


def test_box_filter_preserves_mean_ink():
    weights = box_weights(105, 28)
    assert np.allclose(weights.sum(1), 1.0, atol=1e-6)
    rng = np.random.default_rng(0)
    images = rng.random((3, 105, 105)) < 0.1
    small = downsample(images)
    assert small.shape == (3, 28, 28) and small.min() >= 0 and small.max() <= 1
    assert np.allclose(small.mean((1, 2)), images.mean((1, 2)), atol=1e-5)


def _npy(tmp_path, n: int = 40, size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size)).astype(np.float32)
    images[:, : size // 2] = 0.0  # some structure, and exact zeros that stay zero
    path = tmp_path / "images.npy"
    np.save(path, images)
    return path


def test_training_images_are_redrawn_each_epoch_but_test_is_fixed(tmp_path):
    config = DataConfig(name="images", path=str(_npy(tmp_path)))
    splits = build_data(config)
    gen = torch.Generator().manual_seed(0)
    batches = splits.train.batches(100, shuffle=False, generator=gen)
    first, second = next(iter(batches)), next(iter(batches))
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)  # same images, fresh Bernoulli draws
    assert (first[:, :, :4] == 0).all()  # probability-0 pixels never light up
    again = build_data(config)
    assert torch.equal(splits.test.first(100), again.test.first(100))
    assert torch.equal(splits.val.first(100), again.val.first(100))
    test_batches = list(splits.test.batches(3, shuffle=False))
    assert torch.equal(torch.cat(test_batches), torch.cat(list(splits.test.batches(3, shuffle=False))))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40 and len(splits.test) == 4
    assert splits.stats["image_shape"] == [8, 8]


def test_png_folder_reads_as_grey_levels(tmp_path):
    import matplotlib.pyplot as plt

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(4):
        plt.imsave(folder / f"{i}.png", np.full((6, 5), i / 3), cmap="gray", vmin=0, vmax=1)
    images = read_image_array(folder)
    assert images.shape == (4, 6, 5)
    assert np.allclose(images.mean((1, 2)), [0, 1 / 3, 2 / 3, 1], atol=0.01)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.save(p / "a.npy", np.zeros((4, 5))), "expected N x H x W"),
        (lambda p: np.save(p / "a.npy", np.full((4, 5, 5), np.nan)), "NaN"),
        (lambda p: np.save(p / "a.npy", np.full((4, 5, 5), 255.0)), "must be in [0, 1]"),
        (lambda p: np.savez(p / "a.npz", x=np.zeros((4, 5, 5)), y=np.zeros((4, 5, 5))), "name the array"),
        (lambda p: (p / "a").mkdir(), "no .png files"),
        (lambda p: None, "does not exist"),
        (lambda p: np.save(p / "a.npy", np.zeros((2, 5, 5))), "at least 3"),
    ],
)
def test_bad_image_data_is_a_one_line_config_error(tmp_path, make, message):
    make(tmp_path)
    target = next((p for p in tmp_path.iterdir()), tmp_path / "missing.npy")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        build_data(DataConfig(name="images", path=str(target)))
    assert "\n" not in str(err.value)


def test_missing_omniglot_and_chardata_say_where_to_get_them(tmp_path):
    with pytest.raises(ConfigError, match="OMNIGLOT not found.*README"):
        build_data(DataConfig(name="omniglot", path=str(tmp_path)))
    try:
        import scipy.io
    except ImportError:
        with pytest.raises(ConfigError, match="pip install scipy"):
            build_data(DataConfig(name="omniglot", path=str(tmp_path / "chardata.mat")))
        return
    # scipy present: a chardata.mat-shaped file loads, columns read in Fortran order
    rng = np.random.default_rng(0)
    data, test = (rng.random((784, 1400)) < 0.1).astype(np.float64), (rng.random((784, 20)) < 0.1).astype(float)
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": data, "testdata": test})
    splits = build_data(DataConfig(name="omniglot", path=str(tmp_path / "chardata.mat")))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55, 1345, 20)
    assert torch.equal(splits.test.first(1)[0, 0], torch.from_numpy(test[:, 0].reshape(28, 28, order="F")).float())


@pytest.mark.slow  # reads all 70,000 Fashion-MNIST images
def test_fashion_mnist_loads_when_installed():
    from lagvae.data.images import FASHION_DIR

    if not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} is absent (Debian package dataset-fashion-mnist)")
    splits = build_data(DataConfig(name="fashion-mnist"), None)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55_000, 5_000, 10_000)


@pytest.mark.slow  # reads all of ../shared/data/omniglot: ~3 s
def test_omniglot_split_sizes():
    root = default_data_root()
    if root is None or not (root / "omniglot").is_dir():
        pytest.skip("../shared/data/omniglot is absent (see ../shared/data/README.md)")
    splits = build_data(DataConfig(name="omniglot"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (23_000, 1_345, 8_070)
    assert splits.stats["image_shape"] == [28, 28]
    ink = float(splits.test.first(500).mean())
    assert 0.04 < ink < 0.15  # strokes cover a small fraction of each character


def test_mi_patience_counts_every_epoch_below_the_best_as_the_authors_do():
    def run(patience: int, mis: list[float]) -> list[bool]:
        s = AggressiveStrategy.__new__(AggressiveStrategy)
        s.aggressive, s.previous_mi, s.best_mi, s.mi_not_improved, s.mi_patience = True, 0.0, 0.0, 0, patience
        s.switch_on = "mi_full"  # train.aggressive.switch_on: the rule reads this estimate, not the other
        states = []
        for mi in mis:
            s.end_epoch({"mi": 0.0, "mi_full": mi})
            states.append(s.aggressive)
        return states

    mis = [1.0, 0.9, 1.1, 1.0, 1.05, 1.2, 1.1, 1.1]
    assert run(0, mis) == [True, False, False, False, False, False, False, False]  # text rule: first fall
    # below-best epochs: 0.9, 1.0, 1.05 (a new best 1.1 in between does not reset the count), then 1.1, 1.1
    assert run(2, mis) == [True, True, True, False, False, False, False, False]
    assert run(3, mis) == [True, True, True, True, False, False, False, False]
    assert run(5, mis) == [True, True, True, True, True, True, True, False]
    assert run(5, [-0.1] * 6) == [True, True, True, True, False, False]  # best_mi starts at 0, not at epoch 0's


def _precise_negative_elbo(run, samples: int = 1000) -> float:
    """-ELBO of a run's best model on its test split, with the reconstruction term averaged over `samples` draws
    per image: the expectation of the IW-NLL at K = 1, up to ~0.03 nats of Monte Carlo error."""
    from lagvae.objectives import gaussian_kl, reparameterize
    from lagvae.training.finished import load_trained

    config, model, _ = load_trained(run, "cpu")
    x = torch.cat(list(build_data(config.data).test.batches(100, shuffle=False)))
    torch.manual_seed(0)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        rec = -model.log_prob(x, reparameterize(mu, logvar, samples)).mean(1)
        return float((rec + gaussian_kl(mu, logvar)).mean())


def _record_iw_k(monkeypatch) -> list[int]:
    """The K of every IW estimate `evaluate` asks for from now on."""
    import lagvae.metrics
    import lagvae.training.cost

    calls: list[int] = []
    real = lagvae.metrics.iw_log_likelihood
    # the cost probe's timing calls (K = 1, then one chunk) are not the run's K; pinned so that they stay out
    # whichever test first imports lagvae.training.cost
    monkeypatch.setattr(lagvae.training.cost, "iw_log_likelihood", real)

    def recording(model, x, k, *args, **kwargs):
        calls.append(k)
        return real(model, x, k, *args, **kwargs)

    monkeypatch.setattr(lagvae.metrics, "iw_log_likelihood", recording)
    return calls


def test_train_eval_sample_reconstruct_through_the_cli(tmp_path, capsys, monkeypatch):
    calls = _record_iw_k(monkeypatch)  # the run's test and its eval must both ask for the run's K
    data = _npy(tmp_path)
    out = tmp_path / "run"
    args = ["train", "images", "--method", "aggressive", "--out", str(out), "--epochs", "2", "--no-progress"]
    args += ["--threads", "1", "--set", f"data.path={data}", "--set", "train.batch_size=8"]
    args += ["--set", "eval.iw_samples=64", "--set", "train.agg_max_inner=3", "--set", "train.agg_window=2"]
    args += ["--set", "eval.posterior_points=0"]
    for override in TINY_MODEL:
        args += ["--set", override]
    assert main(args) == 0
    assert calls and set(calls) == {64}, calls
    final = json.loads((out / "final.json").read_text())
    assert math.isfinite(final["nll"]) and final["n"] == 4 and final["iw_samples"] == 64
    # K = 64 tightens the bound: the IW-NLL lies well below E[IW-NLL at K = 1] = -ELBO (about 2 nats here; a K = 1
    # estimate of 4 images has a Monte Carlo sd of about 1 nat, K = 64's about 0.4)
    neg_elbo = _precise_negative_elbo(out)
    assert final["nll"] < neg_elbo - 1.0, (final["nll"], neg_elbo)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["aggressive"] is True and records[0]["inner_steps"] >= 1
    nll_csv = (out / "test_nll.csv").read_text()
    calls.clear()
    capsys.readouterr()
    assert main(["eval", str(out), "--no-progress"]) == 0  # the run's K unless --iw-samples says otherwise
    assert calls and set(calls) == {64}, calls
    printed = json.loads(capsys.readouterr().out)
    again = json.loads((out / "final.json").read_text())
    # the test draws from its own seeded stream, so eval reproduces final.json, the Monte Carlo numbers too
    for key in ("nll", "elbo", "rec", "kl", "mi", "au", "ppl", "n", "iw_samples"):
        assert again[key] == pytest.approx(final[key], rel=1e-6, abs=1e-9), key
        assert printed[key] == again[key], key
    assert (out / "test_nll.csv").read_text() == nll_csv
    png = tmp_path / "samples.png"
    assert main(["sample", str(out), "-n", "3", "--out", str(png), "--no-progress"]) == 0
    import matplotlib.image as mpimg

    assert mpimg.imread(png).shape[0] > 4 * 8  # the grid under its caption (tests/test_first_hour.py: layout)
    rec = tmp_path / "rec.png"
    assert main(["reconstruct", str(out), "-n", "2", "--out", str(rec), "--no-progress"]) == 0
    assert mpimg.imread(rec).shape[0] > 2 * 4 * 8  # a strip of inputs over a strip of reconstructions
    assert main(["reconstruct", str(out), "-n", "2", "--input", str(data), "--out", str(rec), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "2"]) == 2
    assert "--out FILE.png" in capsys.readouterr().err


def test_pixelcnn_method_is_latent_free(tmp_path):
    out = tmp_path / "pixelcnn"
    args = ["train", "images", "--method", "pixelcnn", "--out", str(out), "--epochs", "1", "--no-progress"]
    args += ["--threads", "1", "--set", f"data.path={_npy(tmp_path)}", "--set", "train.batch_size=16"]
    args += ["--set", "model.channels=8", "--set", "model.enc_features=8", "--set", "model.kernels=3"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["latent_dim"] == 0 and config["eval"]["iw_samples"] == 1
    final = json.loads((out / "final.json").read_text())
    assert final["kl"] == 0 and final["nll"] == pytest.approx(-final["elbo"], rel=1e-5)


def test_text_model_on_images_is_a_config_error(tmp_path, capsys):
    args = ["train", "images", "--out", str(tmp_path / "r"), "--set", f"data.path={_npy(tmp_path)}"]
    capsys.readouterr()
    assert main([*args, "--set", "model.kind=lstm", "--no-progress"]) == 2
    err = capsys.readouterr().err
    # the split summary may come first; the error is one line, the last, and says what to set
    assert err.endswith(
        "lagvae: error: model.kind=lstm is a text model but the data are images; use model.kind=image\n"
    )
    assert "Traceback" not in err
