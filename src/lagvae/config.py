"""The run configuration: one tree of typed dataclasses, its JSON round trip and `key=value` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Defined in lagvae.errors; re-exported here, where they were defined before (explicit `as`: a re-export).
from lagvae.errors import ConfigError as ConfigError
from lagvae.errors import LagvaeError as LagvaeError


@dataclass
class DataConfig:
    """Where examples come from. `name` picks the loader; the rest is read by the loaders that need it."""

    name: str = "synthetic"
    seed: int = 783435  # data seed, kept apart from the training seed so every run sees the same corpus
    n_train: int = 16000
    n_val: int = 2000
    n_test: int = 2000
    seq_len: int = 10
    vocab_size: int = 1000
    latent_dim: int = 2
    train_limit: int | None = None
    eval_limit: int | None = None  # first N validation and test examples, for quick trials
    # text: folder with train/valid/test.txt; yelp: folder holding yelp_sentences/; yahoo: folder holding yahoo/;
    # omniglot: folder holding omniglot/ (or chardata.mat); images: a .npy, .npz or folder of PNGs;
    # fashion-mnist: folder of IDX files
    path: str | None = None
    train_path: str | None = None  # text: explicit split files (override data.path)
    valid_path: str | None = None
    test_path: str | None = None
    max_vocab: int = 0  # 0: every training word (subject to min_freq)
    min_freq: int = 1
    max_len: int = 0  # tokens per document, 0: no limit
    overflow: str = "truncate"  # what happens to longer documents: truncate | drop
    vocab_from: str = "used"  # text: vocabulary and statistics from the used training part (train_limit) | all


@dataclass
class BNConfig:
    """model.bn: BN-VAE's fixed scale (Zhu et al. 2020; model.posterior=bn)."""

    gamma: float = 0.5  # valdersoul/bn-vae README's Yahoo command


@dataclass
class DeltaConfig:
    """model.delta: delta-VAE's committed rate, nats per latent dimension (model.posterior=delta)."""

    rate: float = 0.15  # valdersoul/bn-vae text_anneal_fb.py's default


@dataclass
class DUConfig:
    """model.du: DU-VAE's BatchNorm scale, variance floor and variance dropout (Shen et al. 2021)."""

    gamma: float = 0.5  # RMS of the learned BatchNorm scale (SmilesDZgk/DU-VAE README, Yelp and OMNIGLOT)
    rate: float = 1.0  # the variance floor is rate / (2 pi e)
    dropout: float = 0.2  # README: 0.2 for text (Yelp), 0.1 for OMNIGLOT (the image presets set it)


@dataclass
class ModelConfig:
    """Network sizes: the text LSTM VAE (kind lstm) or the image ResNet/PixelCNN VAE (kind image)."""

    embed_dim: int = 50
    enc_hidden: int = 50
    dec_hidden: int = 50
    latent_dim: int = 2
    dec_dropout_in: float = 0.5
    dec_dropout_out: float = 0.5
    kind: str = "lstm"  # lstm: text LSTM encoder/decoder | image: ResNet encoder, gated PixelCNN decoder
    channels: int = 64  # image: channels of the encoder's residual blocks and of every PixelCNN layer
    enc_features: int = 512  # image: channels of the encoder's last conv, before the Linear to (mu, logvar)
    kernels: str = "7,7,7,7,7,5,5,5,5,3,3,3,3"  # image: one gated PixelCNN layer per (odd) kernel size
    posterior: str = "gaussian"  # the head on the encoder's (mu, logvar): gaussian | bn | delta | du
    # the text encoder's initial weights: uniform (the paper's U(-0.01, 0.01), embeddings U(-0.1, 0.1)) | torch
    # (PyTorch's defaults, as BN-VAE's and DU-VAE's encoders keep them: their BatchNorm needs mu to vary)
    enc_init: str = "uniform"
    skip: bool = False  # Skip-VAE: z also enters the decoder's output layer (Dieng et al. 2019)
    bn: BNConfig = field(default_factory=BNConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    du: DUConfig = field(default_factory=DUConfig)


@dataclass
class CyclicalConfig:
    """train.cyclical: Fu et al.'s (2019) cyclical KL schedule (train.schedule=cyclical)."""

    n_cycles: int = 4  # cycles over the whole run
    ratio: float = 0.5  # fraction of each cycle spent rising
    shape: str = "linear"  # linear | cosine | sigmoid


@dataclass
class AggressiveConfig:
    """train.aggressive: the encoder-only inner loop and its switch-off (train.strategy=aggressive)."""

    window: int = 15  # inner steps per window when comparing the encoder loss
    max_inner: int = 100
    # 0: switch aggressive off at the first fall of validation I_q (the text rule); N > 0: after N epochs
    # without a new best I_q (the paper's OMNIGLOT rule, N = 5)
    mi_patience: int = 0
    # which validation I_q estimate drives that switch-off: the paper's per-minibatch `mi`, or `mi_full`
    switch_on: str = "mi"


@dataclass
class SAVAEConfig:
    """train.savae: SA-VAE's SVI refinement (Kim et al. 2018; train.strategy=savae)."""

    steps: int = 20  # SVI steps per example (Kim et al.'s text setting)
    # Kim et al.'s SVI lr, on the batch-MEAN loss: each example steps lr / B on its own ELBO, B the global size
    # of the batch being refined (an epoch's last batch can be short; at evaluation, the evaluation batch)
    lr: float = 1.0
    momentum: float = 0.5
    max_grad_norm: float = 5.0
    # Kim et al.'s choices by default but the clip; the other choices stay selectable (docs/DESIGN.md, "SA-VAE").
    # example: each x's joint (mu, logvar) gradient; batch (Kim's): mu's and logvar's batch-mean gradients,
    # which let one example's logvar run off (KL 1.8e20 in epoch 0 of the synthetic preset, seed 0)
    clip: str = "example"
    anneal: bool = True  # the SVI objective uses the current KL weight (else weight 1)
    decoder_through: bool = True  # the decoder's gradient also flows through the unrolled SVI steps


@dataclass
class PretrainConfig:
    """train.pretrain: an autoencoder phase before training (Li et al. 2019's encoder pretraining)."""

    enabled: bool = False
    # epochs of the autoencoder phase (KL weight 0; the LR rule runs on validation reconstruction); None:
    # train.epochs, as the authors' first stage is a whole run under the same cap and rule
    epochs: int | None = None


@dataclass
class MDRConfig:
    """train.mdr: the minimum desired rate's Lagrangian (Pelsmaeker and Aziz 2020; train.strategy=mdr)."""

    rate: float = 5.0  # r, nats: the README's setting
    # the multiplier's start and its RMSprop step (deep-generative-lm's vae-lagging-encoder fork, text.py)
    init: float = 0.5
    lr: float = 1e-3


@dataclass
class TrainConfig:
    """The optimisation: method pieces, optimisers, KL schedule, aggressive loop and learning-rate rule."""

    method: str = "vae"
    strategy: str = "joint"  # joint | aggressive | savae | mdr; set from `method`
    schedule: str = "linear"  # KL weight: linear (anneal kl_start -> 1) | constant (beta) | cyclical
    # plain | free-bits (Kingma et al.: per dimension, batch mean) | free-bits-example (Li et al.'s fb 2:
    # per example and dimension)
    kl_term: str = "plain"
    epochs: int = 50
    batch_size: int = 16
    seed: int = 783435
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 1.0
    momentum: float = 0.0
    clip_grad: float = 5.0
    kl_start: float = 1.0  # 1.0 means no annealing
    warm_up: int = 10  # epochs of linear KL annealing from kl_start to 1
    beta: float = 1.0  # the constant KL weight of `beta`
    free_bits: float = 0.1  # free-bits target lambda, nats per latent dimension (both free-bits KL terms)
    cyclical: CyclicalConfig = field(default_factory=CyclicalConfig)
    aggressive: AggressiveConfig = field(default_factory=AggressiveConfig)
    savae: SAVAEConfig = field(default_factory=SAVAEConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    mdr: MDRConfig = field(default_factory=MDRConfig)
    lr_decay: float = 0.5
    lr_patience: int = 2  # epochs without validation improvement before a decay
    lr_decay_min_epoch: int = 15  # no decay before this epoch (the paper's text setting)
    max_decays: int = 5
    checkpoint_minutes: float = 10.0  # also write last.pt inside an epoch this often (0: only at epoch ends)


@dataclass
class EvalConfig:
    """Diagnostics: IW-NLL sample counts and the posterior-mean-space snapshots."""

    iw_samples: int = 500  # K at the final test
    # working memory of the IW decode: samples are decoded in chunks that fit (logits never exist whole)
    max_memory_mb: float = 512
    batch_size: int = 0  # 0: the training batch size (MI uses each eval minibatch as its aggregate)
    posterior_points: int = 100  # held-out x in the posterior-mean picture; 0 turns it off
    posterior_grid: float = 0.35  # grid step for the true posterior mean (each grid point costs one decode per x)
    posterior_range: float = 3.5  # grid covers [-range, range] per latent dimension
    snapshots_epoch0: int = 4  # snapshots inside epoch 0 ...
    snapshot_epochs: int = 10  # ... then one at the end of each of the first N epochs
    # I_q with the aggregate posterior over the whole split (mi_full); above this many examples, a seeded
    # subsample of this size (its size is recorded as mi_full_n)
    mi_full_max: int = 10_000
    alarm: bool = True  # announce posterior collapse, or KL paid without information, while training
    alarm_epochs: int = 2  # consecutive validations a condition must hold
    alarm_mi: float = 0.05  # collapse: AU 0, mi_full below this and KL below alarm_kl
    alarm_kl: float = 0.1
    alarm_kl_spent: float = 1.0  # KL without information: KL above this and mi_full below alarm_ratio x KL
    alarm_ratio: float = 0.1


@dataclass
class LogConfig:
    """Where training is logged besides metrics.jsonl."""

    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard (pip install 'lagvae[tensorboard]')
    every_steps: int = 50  # the training loss every this many outer steps


# The config.json layout. Files without `schema` are version 0 (before it existed); every key added since
# defaults to the behaviour such files had. Bump it when a default changes, and translate in load_json.
SCHEMA_VERSION = 2

# Schema 1's flat train keys and the section fields that replaced them in schema 2. load_json moves them;
# `--set` and method parameters still accept the old names (README, RESULTS and scripts quote them).
ALIASES = {
    **{f"train.agg_{k}": f"train.aggressive.{k}" for k in ("window", "max_inner", "mi_patience", "switch_on")},
    **{
        f"train.svi_{k}": f"train.savae.{k}"
        for k in ("steps", "lr", "momentum", "max_grad_norm", "clip", "anneal", "decoder_through")
    },
    "train.n_cycles": "train.cyclical.n_cycles",
    "train.cycle_ratio": "train.cyclical.ratio",
    "train.cycle_shape": "train.cyclical.shape",
}


@dataclass
class RunConfig:
    """Everything one run needs; saved as config.json in the run folder."""

    schema: int = SCHEMA_VERSION
    preset: str = "synthetic"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # 0: chosen from the model size (see training.runtime)
    progress: bool = True


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested `to_dict` tree as {"section.field": value}, the keys `--set` takes."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Rebuild a dataclass tree from `to_dict` output; unknown keys are an error, missing keys keep defaults.
    A section that is not a JSON object, or a value of the wrong type, is a ConfigError naming its key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        hint, name = hints[key], f"{prefix}{key}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config section {name!r} is {_json_kind(value)}, not a section (a JSON object)")
            kwargs[key] = from_dict(hint, value, f"{name}.")
        else:
            kwargs[key] = _typed(value, hint, name)
    return cls(**kwargs)


def _typed(value: Any, hint: Any, key: str) -> Any:
    """`value` as the field's type (an integral float for an int), else a ConfigError naming `key`: a wrong type
    would otherwise reach a constructor deep inside torch as a traceback."""
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    if value is None and len(allowed) < len(typing.get_args(hint)):
        return value
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return value
        if kind not in (bool, int, float, str):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ConfigError(f"config key {key!r} is {_json_kind(value)} {value!r:.40}, expected {names}")


def _json_kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), "null" if value is None else type(value).__name__)


# Fields that older run folders may hold and that no longer exist (replaced by: see the comment).
RETIRED = {"eval": ("iw_chunk",)}  # eval.max_memory_mb


def read_json(path: Path, expected: type, what: str) -> Any:
    """The JSON value in `path`, which must be an `expected` (dict or list); a file that cannot be read, is not
    JSON or holds something else is a one-line ConfigError naming it and `what` it should have been."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}; it is damaged or not {what}") from None
    if not isinstance(data, expected):
        raise ConfigError(f"cannot read {path}: not {what} (a JSON {expected.__name__})")
    return data


def load_json(path: Path) -> RunConfig:
    """The RunConfig saved at `path`; a damaged or foreign file is a one-line ConfigError naming it."""
    data = read_json(path, dict, "a lagvae config")
    data.setdefault("schema", 0)
    if data["schema"] == 0 and isinstance(data.get("data"), dict):
        data["data"].setdefault("vocab_from", "all")  # schema 0 built the vocabulary from the whole file
    if not isinstance(data["schema"], int) or data["schema"] > SCHEMA_VERSION:
        raise ConfigError(f"{path} has config schema {data['schema']!r}, newer than this lagvae's {SCHEMA_VERSION}")
    for section, keys in RETIRED.items():
        for key in keys:
            if isinstance(data.get(section), dict):  # a section of the wrong type is refused by from_dict
                data[section].pop(key, None)
    if data["schema"] < 2:
        _move_aliased(data)
    data["schema"] = SCHEMA_VERSION  # translated: what the object holds is this version's layout
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"cannot read {path}: {err}") from None


def _move_aliased(data: dict[str, Any]) -> None:
    """Schema 1 -> 2 in place: each flat `train.agg_*`/`svi_*`/`cycle_*` key moves into its section."""
    for old, new in ALIASES.items():
        old_section, old_key = old.split(".")
        source = data.get(old_section)
        if isinstance(source, dict) and old_key in source:
            *path, key = new.split(".")
            node = data
            for part in path:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"config section {'.'.join(path)!r} is not a section")
            node[key] = source.pop(old_key)


def _parse_scalar(text: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _parse_scalar(text, args[0], key)
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return hint(text)
    except ValueError:
        raise ConfigError(f"{key}: cannot read {text!r} as {getattr(hint, '__name__', hint)}") from None


def apply_override(config: RunConfig, assignment: str) -> None:
    """Apply one `section.field=value` override in place, with a did-you-mean on typos."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value (e.g. train.lr=0.5)")
    key, text = assignment.split("=", 1)
    key = ALIASES.get(key.strip(), key)
    node: Any = config
    parts = key.strip().split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            prefix = ".".join(parts[:depth])
            full = [f"{prefix}.{n}" if prefix else n for n in names]
            guess = difflib.get_close_matches(key, list(flatten(to_dict(config))), n=1)
            hint = f"; did you mean {guess[0]}?" if guess else f"; choose from {', '.join(full)}"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if depth == len(parts) - 1:
            hint_type = typing.get_type_hints(type(node))[part]
            if dataclasses.is_dataclass(hint_type):
                raise ConfigError(f"{key!r} is a section; set one of its fields, e.g. {key}.<field>=...")
            setattr(node, part, _parse_scalar(text.strip(), hint_type, key))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])!r} is not a section")
