"""Config overrides, presets, method composition and the JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lagvae.config import (
    ALIASES,
    SCHEMA_VERSION,
    ConfigError,
    RunConfig,
    apply_override,
    flatten,
    from_dict,
    load_json,
    to_dict,
)
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
        *("synthetic", "synthetic-1d", "ptb", "yelp", "yahoo", "text"),
        *("omniglot", "omniglot-small", "fashion-mnist", "images"),
    }
    omniglot = make_config("omniglot", "aggressive")
    assert (omniglot.model.kind, omniglot.train.optimizer, omniglot.train.lr) == ("image", "adam", 1e-3)
    assert (omniglot.train.batch_size, omniglot.train.lr_patience, omniglot.train.max_decays) == (50, 20, 5)
    assert (omniglot.train.aggressive.window, omniglot.train.aggressive.mi_patience) == (10, 5)
    assert len(omniglot.model.kernels.split(",")) == 13 and omniglot.model.channels == 64
    with pytest.raises(ConfigError, match="image preset"):
        make_config("omniglot", size="paper")


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_schema_1_config_loads_into_the_sections_that_replaced_its_flat_keys(tmp_path):
    # a PTB grid cell's config.json as schema 1 wrote it, with non-default values in every moved family
    old = json.loads((FIXTURES / "config_schema1.json").read_text())
    assert old["schema"] == 1 and "agg_window" in old["train"]
    config = load_json(FIXTURES / "config_schema1.json")
    t = config.train
    assert (t.aggressive.window, t.aggressive.max_inner, t.aggressive.switch_on) == (7, 33, "mi_full")
    assert (t.savae.steps, t.savae.clip, t.savae.anneal, t.savae.momentum) == (3, "batch", False, 0.5)
    assert (t.cyclical.n_cycles, t.cyclical.shape, t.cyclical.ratio) == (2, "cosine", 0.5)
    assert (t.method, t.epochs, t.kl_start, config.model.dec_hidden) == ("aggressive-anneal", 40, 0.1, 128)
    # every old key is accounted for: moved to its section or kept where it was
    flat_new = flatten(to_dict(config))
    for key, value in flatten(old).items():
        if key != "schema":
            assert flat_new[ALIASES.get(key, key)] == value, key
    RunFolder(tmp_path).write_config(config)
    again = json.loads((tmp_path / "config.json").read_text())
    assert again["schema"] == SCHEMA_VERSION and "agg_window" not in again["train"]
    assert load_json(tmp_path / "config.json") == config


def test_old_flat_keys_are_accepted_as_aliases_of_their_section_fields():
    text = {"train.svi_clip": "batch", "train.agg_switch_on": "mi_full", "train.cycle_shape": "cosine"}
    text |= {"train.svi_anneal": "false", "train.svi_decoder_through": "false", "train.cycle_ratio": "0.25"}
    expected = {"batch": "batch", "mi_full": "mi_full", "cosine": "cosine", "false": False, "0.25": 0.25, "3": 3}
    config = RunConfig()
    for old, new in ALIASES.items():
        apply_override(config, f"{old}={text.get(old, '3')}")
        assert flatten(to_dict(config))[new] == expected[text.get(old, "3")], old
    with pytest.raises(ConfigError, match="did you mean train.aggressive.window"):
        apply_override(config, "train.aggressive.windw=3")


def test_an_old_schema_run_folder_resumes(tmp_path):
    from lagvae.cli import main
    from tests.test_cli import TINY

    args = ["train", "synthetic", "--method", "aggressive", "--out", str(tmp_path / "run"), *TINY]
    assert main([*args, "--epochs", "1", "--set", "train.agg_window=7"]) == 0
    # rewrite config.json as schema 1 wrote it: the moved fields back in their flat train keys
    path = tmp_path / "run" / "config.json"
    data = json.loads(path.read_text())
    data["schema"] = 1
    for old, new in ALIASES.items():
        _, section, key = new.split(".")
        data["train"][old.split(".")[1]] = data["train"][section].pop(key)
    for section in ("aggressive", "savae", "cyclical"):
        assert data["train"].pop(section) == {}
    path.write_text(json.dumps(data))
    assert main([*args, "--epochs", "2", "--resume", "--set", "train.agg_window=7"]) == 0
    resumed = load_json(path)
    assert resumed.schema == SCHEMA_VERSION and resumed.train.aggressive.window == 7
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
