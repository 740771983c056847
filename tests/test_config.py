"""Config overrides, presets, method composition and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from lagvae.config import ConfigError, RunConfig, apply_override, from_dict, load_json, to_dict
from lagvae.experiments.presets import PRESETS, make_config
from lagvae.training.methods import METHODS
from lagvae.training.run_folder import RunFolder


def test_overrides_parse_to_field_types():
    config = RunConfig()
    for text in ("train.lr=0.25", "model.latent_dim=1", "progress=false", "data.train_limit=none"):
        apply_override(config, text)
    assert config.train.lr == 0.25 and config.model.latent_dim == 1
    assert config.progress is False and config.data.train_limit is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lrr=1", "did you mean train.lr"),
        ("train.lr", "key=value"),
        ("train.epochs=ten", "cannot read 'ten' as int"),
        ("train=3", "is a section"),
    ],
)
def test_override_mistakes_are_one_line_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(RunConfig(), text)


def test_json_round_trip(tmp_path):
    config = make_config("synthetic-1d", "aggressive-anneal", epochs=3, overrides=["train.lr=0.5"])
    RunFolder(tmp_path).write_config(config)
    assert load_json(tmp_path / "config.json") == config
    # a config.json from before eval.iw_chunk was retired still loads
    old = json.loads((tmp_path / "config.json").read_text())
    old["eval"]["iw_chunk"] = 50
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert load_json(tmp_path / "config.json") == config
    with pytest.raises(ConfigError, match="unknown config keys"):
        from_dict(RunConfig, {**to_dict(config), "bogus": 1})


def test_methods_compose_strategy_and_schedule():
    assert make_config("synthetic", "aggressive-anneal").train.strategy == "aggressive"
    assert make_config("synthetic", "aggressive-anneal").train.kl_start == 0.1
    assert make_config("synthetic", "vae").train.kl_start == 1.0
    assert make_config("synthetic", "vae", overrides=["train.kl_start=0.3"]).train.kl_start == 0.3
    assert set(METHODS) >= {"vae", "vae-anneal", "aggressive", "aggressive-anneal"}


def test_sizes_and_presets():
    assert make_config("synthetic", size="paper").model.dec_hidden == 1024
    assert make_config("synthetic-1d").model.latent_dim == 1
    for bad in (
        lambda: make_config("nope"),
        lambda: make_config("synthetic", "nope"),
        lambda: make_config("synthetic", size="huge"),
    ):
        with pytest.raises(ConfigError, match="choose from"):
            bad()
    assert set(PRESETS) == {
        *("synthetic", "synthetic-1d", "ptb", "yelp", "text"),
        *("omniglot", "omniglot-small", "fashion-mnist", "images"),
    }
    omniglot = make_config("omniglot", "aggressive")
    assert (omniglot.model.kind, omniglot.train.optimizer, omniglot.train.lr) == ("image", "adam", 1e-3)
    assert (omniglot.train.batch_size, omniglot.train.lr_patience, omniglot.train.max_decays) == (50, 20, 5)
    assert (omniglot.train.agg_window, omniglot.train.agg_mi_patience) == (10, 5)
    assert len(omniglot.model.kernels.split(",")) == 13 and omniglot.model.channels == 64
    with pytest.raises(ConfigError, match="image preset"):
        make_config("omniglot", size="paper")
