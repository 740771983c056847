"""Named presets (plain RunConfig instances), model sizes, and `make_config` (preset + method + overrides)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from lagvae.config import ConfigError, DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig, apply_override
from lagvae.training.methods import apply_method

# Model sizes (embedding/hidden/latent) with the batch size and optimiser the paper pairs with them.
SIZES: dict[str, tuple[ModelConfig, dict[str, float | int]]] = {
    "synthetic": (ModelConfig(50, 50, 50, 2), {"batch_size": 16, "lr": 1.0}),
    # `cpu`: a 64/128 LSTM pair, for real-text comparisons that fit a session on a 2-core machine
    "cpu": (ModelConfig(64, 128, 128, 32), {"batch_size": 32, "lr": 1.0}),
    "small": (ModelConfig(128, 256, 256, 32), {"batch_size": 32, "lr": 1.0}),
    "paper": (ModelConfig(512, 1024, 1024, 32), {"batch_size": 32, "lr": 1.0}),
}


def synthetic() -> RunConfig:
    """The paper's synthetic experiment: 2-d-latent LSTM data, 50/50 LSTM VAE with z = 2, SGD lr 1."""
    return RunConfig(preset="synthetic", data=DataConfig(), model=ModelConfig(), train=TrainConfig(), eval=EvalConfig())


def synthetic_1d() -> RunConfig:
    """Figure 1's setting: a 1-d latent VAE on the 2-d-latent synthetic data, with a fine 1-d grid."""
    config = synthetic()
    config.preset = "synthetic-1d"
    config.model.latent_dim = 1
    config.eval.posterior_grid = 0.1
    config.eval.posterior_range = 5.0
    config.eval.posterior_points = 300
    return config


def _text(name: str) -> RunConfig:
    """A real-text preset: the CPU-friendly `small` model (`--size paper` for the paper's), SGD lr 1, batch 32."""
    config = RunConfig(preset=name, data=DataConfig(name=name))
    apply_size(config, "small")
    config.train.epochs = 30
    config.eval.posterior_points = 0  # z = 32: no grid picture
    return config


def yahoo() -> RunConfig:
    """The paper's Yahoo Answers documents in a reduced setting (lagvae.data.yahoo: train 9,000 and validate on
    1,000 documents of its validation file, test on its 10,000 test documents): the vocabulary from the whole
    training part and no length cap (documents are 20-200 tokens), as the paper's vocabulary is its file's."""
    config = _text("yahoo")
    config.data.vocab_from = "all"
    config.data.max_len = 0
    return config


def _user_text() -> RunConfig:
    """Your corpus: the real-text preset with the paper's Yahoo/Yelp vocabulary cap of 20,000 words, so that a
    corpus with many rare words (43,552 types in a 1,000-document trial) does not size the output layer."""
    config = _text("text")
    config.data.max_vocab = 20_000
    return config


def _images(name: str, data: str, small: bool) -> RunConfig:
    """A binary-image preset: ResNet encoder, gated PixelCNN decoder, z = 32, Adam lr 1e-3, batch 50.

    As in He et al. (2019) on OMNIGLOT: the learning rate is halved after 20 epochs without a better
    validation loss (5 halvings end training), the aggressive inner loop compares windows of 10 steps, and
    aggressive training stops after 5 epochs without a new best I_q. `small` shrinks the networks until an
    aggressive comparison fits a CPU session (2 PixelCNN layers, kernels 5 and 3, of 16 channels; a
    16-channel encoder with 64 features: ~0.1 s per step of 50 images on one core, measured by
    benchmarks/bench_steps.py) and keeps the rules.
    """
    model = ModelConfig(kind="image", latent_dim=32)
    if small:
        model.channels, model.enc_features, model.kernels = 16, 64, "5,3"
    train = TrainConfig(optimizer="adam", lr=1e-3, batch_size=50, epochs=200)
    train.lr_patience, train.lr_decay_min_epoch, train.max_decays = 20, 0, 5
    train.aggressive.window, train.aggressive.mi_patience = 10, 5
    evaluation = EvalConfig(posterior_points=0)
    return RunConfig(preset=name, data=DataConfig(name=data), model=model, train=train, eval=evaluation)


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "synthetic": synthetic,
    "synthetic-1d": synthetic_1d,
    "ptb": lambda: _text("ptb"),
    "yelp": lambda: _text("yelp"),
    "yahoo": yahoo,  # ../shared/data/yahoo (or --set data.path=FOLDER holding yahoo/)
    "text": _user_text,  # the user's corpus: --set data.path=FOLDER
    "omniglot": lambda: _images("omniglot", "omniglot", small=False),
    "omniglot-small": lambda: _images("omniglot-small", "omniglot", small=True),
    "fashion-mnist": lambda: _images("fashion-mnist", "fashion-mnist", small=True),
    "images": lambda: _images("images", "images", small=True),  # the user's images: --set data.path=FILE
}


def apply_size(config: RunConfig, size: str) -> None:
    """Swap in one of SIZES, keeping the preset's data (text sizes: image presets have no --size)."""
    if config.model.kind != "lstm":
        raise ConfigError(f"--size picks text model sizes; {config.preset} is an image preset (use --set model.*)")
    if size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    model, train = SIZES[size]
    config.model = copy.deepcopy(model)  # its sections too: an override must never reach SIZES
    for key, value in train.items():
        setattr(config.train, key, value)


def make_config(
    preset: str,
    method: str = "vae",
    *,
    size: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    train_limit: int | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """Resolve a run: the preset, then its model size, the method's pieces, the flags, then key=value overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    config = PRESETS[preset]()
    if size is not None:
        apply_size(config, size)
    apply_method(config, method)
    if epochs is not None:
        config.train.epochs = epochs
    if seed is not None:
        config.train.seed = seed
    if train_limit is not None:
        config.data.train_limit = train_limit
    for assignment in overrides:
        apply_override(config, assignment)
    return config
