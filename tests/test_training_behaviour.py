"""Training behaviours end to end on tiny settings: the KL warm-up, model selection and the LR rule's early stop,
resume/overwrite refusals, explicit text split files, and method specs with a parameter (`beta=B`, ...)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import lagvae.training.loop as loop
from lagvae.cli import main
from lagvae.config import ConfigError, TrainConfig, flatten, to_dict
from lagvae.experiments.compare import Grid, parse_method, plan_commands
from lagvae.experiments.presets import make_config
from lagvae.training.schedules import kl_weight
from lagvae.training.strategies import JointStrategy

# Synthetic preset, 48 training sentences in batches of 16: 3 outer steps per epoch.
TINY = [
    "--train-limit", "48", "--no-progress", "--threads", "1", "--set", "data.n_train=100", "--set", "data.n_val=32",
    "--set", "data.n_test=16", "--set", "eval.iw_samples=4", "--set", "eval.posterior_points=0",
]  # fmt: skip
STEPS_PER_EPOCH = 3


def _train(out: Path, *extra: str, method: str = "vae", epochs: int = 2) -> int:
    return main(["train", "synthetic", "--method", method, "--out", str(out), "--epochs", str(epochs), *TINY, *extra])


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _final(out: Path) -> dict[str, Any]:
    return json.loads((out / "final.json").read_text())


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("lagvae: error")]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _script_validation(monkeypatch: pytest.MonkeyPatch, elbos: list[float]) -> list[float]:
    """Validation after epoch i reports ELBO elbos[i] (the other metrics are real); the test is untouched
    (it calls lagvae.metrics.evaluate through lagvae.training.evaluation, not the loop's name).
    Returns the list of ELBOs handed out, for the caller to check the number of validations."""
    scripted: Iterator[float] = iter(elbos)
    handed: list[float] = []
    real = loop.evaluate

    def scripted_validation(*args: Any, **kwargs: Any) -> dict[str, Any]:
        out = real(*args, **kwargs)
        out["elbo"] = next(scripted)
        handed.append(out["elbo"])
        return out

    monkeypatch.setattr(loop, "evaluate", scripted_validation)
    return handed


# ---- 1. the KL warm-up ------------------------------------------------------------------------------------


def _anneal(step: int, start: float, warm_up_steps: int) -> float:
    """The paper's schedule written out: start -> 1 linearly over warm_up_steps iterations, then 1."""
    return min(1.0, start + step * (1.0 - start) / warm_up_steps)


def test_kl_warm_up_rises_per_iteration_over_the_configured_epochs_then_holds_one() -> None:
    anneal = make_config("synthetic", "vae-anneal").train
    assert (anneal.schedule, anneal.kl_start, anneal.warm_up) == ("linear", 0.1, 10)  # the paper's 0.1 -> 1, 10 epochs
    iters = 250
    for step in (0, 1, 7, iters - 1, iters, 5 * iters, 10 * iters - 1):
        assert kl_weight(step, anneal, iters) == pytest.approx(0.1 + step * 0.9 / (10 * iters), abs=1e-12), step
    assert kl_weight(5 * iters, anneal, iters) == pytest.approx(0.55, abs=1e-12)  # half-way after 5 epochs
    assert kl_weight(10 * iters - 1, anneal, iters) < 1.0
    for step in (10 * iters, 10 * iters + 1, 49 * iters):
        assert kl_weight(step, anneal, iters) == 1.0, step
    # the warm-up length counts epochs of this run's size, not a fixed number of steps
    assert kl_weight(15, anneal, 3) == pytest.approx(0.1 + 15 * 0.9 / 30)
    # no annealing: `vae` sits at weight 1 from its first step
    plain = make_config("synthetic", "vae").train
    assert [kl_weight(step, plain, iters) for step in (0, 1, iters, 100 * iters)] == [1.0] * 4
    custom = TrainConfig(kl_start=0.4, warm_up=2)
    assert [kl_weight(s, custom, 3) for s in range(8)] == pytest.approx([_anneal(s, 0.4, 6) for s in range(8)])


def test_the_trainer_steps_with_the_annealed_weight_and_records_it_per_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed: list[float] = []
    real_step = JointStrategy.step

    def recording_step(self: JointStrategy, x: torch.Tensor, beta: float, rows: Any = None) -> Any:
        passed.append(beta)
        return real_step(self, x, beta, rows)

    monkeypatch.setattr(JointStrategy, "step", recording_step)
    out = tmp_path / "anneal"
    assert _train(out, "--set", "train.warm_up=2", method="vae-anneal", epochs=3) == 0
    warm_up_steps = 2 * STEPS_PER_EPOCH
    expected = [_anneal(step, 0.1, warm_up_steps) for step in range(3 * STEPS_PER_EPOCH)]
    assert expected[-3:] == [1.0, 1.0, 1.0]  # held at 1 after the warm-up
    assert passed == pytest.approx(expected, abs=1e-12)  # 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1, 1, 1
    records = _records(out)
    assert [r["step"] for r in records] == [3, 6, 9]
    # metrics.jsonl records the weight of each epoch's last step
    assert [r["kl_weight"] for r in records] == pytest.approx([0.4, 0.85, 1.0], abs=1e-12)


# ---- 2. model selection and the LR rule's early stop -------------------------------------------------------


def test_final_json_tests_the_best_checkpoint_not_the_last_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    handed = _script_validation(monkeypatch, [-10.0, -20.0])  # epoch 1 validates worse than epoch 0
    assert _train(out) == 0
    assert handed == [-10.0, -20.0]
    final = _final(out)
    assert final["best_epoch"] == 0 and final["epochs"] == 2
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert best["epoch"] == 0 and last["state"]["epoch"] == 2 and last["state"]["best_epoch"] == 0
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])  # epoch 1 trained on
    # The test is deterministic (its own seeded stream), so `eval` of best.pt reproduces final.json ...
    assert main(["eval", str(out)]) == 0
    again = _final(out)
    # ... and the same folder with last.pt's weights put in best.pt gives other numbers
    other = tmp_path / "last-as-best"
    shutil.copytree(out, other)
    torch.save({"model": last["model"], "epoch": 1}, other / "best.pt")
    assert main(["eval", str(other)]) == 0
    with_last = _final(other)
    for key in ("nll", "elbo", "kl"):
        assert final[key] == pytest.approx(again[key], rel=1e-6, abs=1e-9), key
    assert abs(final["nll"] - with_last["nll"]) > 1e-4 and abs(final["elbo"] - with_last["elbo"]) > 1e-4


@pytest.mark.parametrize(("max_decays", "epochs_run"), [(1, 2), (2, 3)])
def test_the_lr_rules_last_decay_ends_training_before_the_epoch_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_decays: int, epochs_run: int
) -> None:
    # patience 1 from epoch 0: every epoch after the first is a plateau and decays the rate
    handed = _script_validation(monkeypatch, [-10.0, -20.0, -30.0, -40.0, -50.0, -60.0])
    out = tmp_path / "run"
    rule = ["--set", "train.lr_decay_min_epoch=0", "--set", "train.lr_patience=1"]
    rule += ["--set", f"train.max_decays={max_decays}"]
    assert _train(out, *rule, epochs=6) == 0
    assert len(handed) == epochs_run
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(epochs_run))
    assert [r["lr"] for r in records] == [1.0, 1.0, 0.5][:epochs_run]  # the rate each epoch trained at
    final = _final(out)
    assert final["epochs"] == epochs_run and final["best_epoch"] == 0
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["state"]["stopped"] is True and last["state"]["epoch"] == epochs_run
    assert last["lr_rule"]["decays"] == max_decays and last["lr_rule"]["lr"] == 0.5**max_decays
    # a stopped run stays stopped: resuming it with a larger limit trains no further epoch
    before = (out / "metrics.jsonl").read_text()
    assert _train(out, *rule, "--resume", epochs=8) == 0
    assert len(handed) == epochs_run
    assert (out / "metrics.jsonl").read_text() == before and _final(out)["epochs"] == epochs_run


# ---- 3. and 4. --resume with nothing to resume, --overwrite with --resume ----------------------------------


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_with_nothing_to_resume_is_one_line_naming_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    out = tmp_path / "nothing"
    if state == "empty":
        out.mkdir()
    for resume in (["--resume"], ["--resume", "yes"]):
        assert _train(out, *resume) == 2
        err = capsys.readouterr().err
        assert err == f"lagvae: error: nothing to resume: {out / 'config.json'} does not exist\n"
    if state == "missing":
        assert not out.exists()  # a refused resume leaves no folder behind
    else:
        assert not (set(p.name for p in out.iterdir()) - {".lock"})  # and writes no run file


def test_resume_of_a_run_killed_before_its_first_checkpoint_points_to_resume_auto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    # the config.json that `_train(out)` writes first, as if that run had been killed before its first last.pt
    sets = [value for flag, value in zip(TINY, TINY[1:], strict=False) if flag == "--set"]
    config = make_config("synthetic", "vae", epochs=2, train_limit=48, overrides=[*sets, "threads=1", "progress=0"])
    (out / "config.json").write_text(json.dumps(to_dict(config)))
    assert _train(out, "--resume") == 2
    err = capsys.readouterr().err
    assert err == (
        f"lagvae: error: nothing to resume: {out / 'last.pt'} does not exist (--resume auto starts instead)\n"
    )
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["config.json"]


def test_overwrite_with_resume_is_refused_before_any_file_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(out, epochs=1) == 0
    before = _snapshot(out)
    capsys.readouterr()
    for resume in (["--resume"], ["--resume", "auto"]):
        assert _train(out, "--overwrite", *resume, epochs=2) == 2
        err = capsys.readouterr().err
        assert err == "lagvae: error: --overwrite starts a new run and --resume continues one; choose one\n"
        assert _snapshot(out) == before  # neither deleted nor continued
    fresh = tmp_path / "fresh"
    assert _train(fresh, "--overwrite", "--resume") == 2
    assert "choose one" in capsys.readouterr().err and not fresh.exists()


# ---- 5. the text preset from three explicit files ------------------------------------------------------------

TRAIN_DOCS = ["the cat sat on the mat", "a dog sat", "the dog ran", "", "cat and dog", "the mat"]
VALID_DOCS = ["the zebra sat", "a cat ran", "quagga quagga"]
TEST_DOCS = ["the cat sat", "an ocelot ran"]


def _split_files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "train": tmp_path / "corpora" / "mine" / "train_docs.txt",
        "valid": tmp_path / "elsewhere" / "dev.txt",
        "test": tmp_path / "held" / "out" / "final-test.txt",
    }
    for split, lines in (("train", TRAIN_DOCS), ("valid", VALID_DOCS), ("test", TEST_DOCS)):
        paths[split].parent.mkdir(parents=True)
        paths[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def test_text_preset_trains_on_three_split_files_in_different_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _split_files(tmp_path)
    out = tmp_path / "run"
    args = ["train", "text", "--size", "synthetic", "--epochs", "1", "--out", str(out), "--no-progress"]
    args += ["--threads", "1", "--set", "train.batch_size=2", "--set", "eval.iw_samples=2"]
    args += ["--set", f"data.train_path={paths['train']}", "--set", f"data.valid_path={paths['valid']}"]
    args += ["--set", f"data.test_path={paths['test']}"]
    assert main(args) == 0
    err = capsys.readouterr().err
    # the vocabulary is the training file's words, by frequency (ties alphabetical): none from valid or test
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab == ["the", "dog", "cat", "mat", "sat", "a", "and", "on", "ran"]
    assert "vocabulary: 13 words" in err  # 9 + <pad>, <s>, </s>, <unk>
    assert "train: 5 documents" in err and "val: 3 documents" in err and "test: 2 documents" in err
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["empty_lines"] == {"train": 1, "valid": 0, "test": 0}
    assert stats["unknown_tokens"] == {"train": 0, "valid": 3, "test": 2}  # zebra, quagga x2; an, ocelot
    assert stats["longest"]["train"] == 6
    assert [r["step"] for r in _records(out)] == [3]  # 5 training documents in batches of 2
    final = _final(out)
    assert final["n"] == len(TEST_DOCS) and final["epochs"] == 1
    saved = json.loads((out / "config.json").read_text())["data"]
    assert saved["path"] is None
    assert [saved[f"{s}_path"] for s in ("train", "valid", "test")] == [
        str(paths[s]) for s in ("train", "valid", "test")
    ]
    # the run folder finds its files again: eval rebuilds the test split from them and reproduces final.json
    assert main(["eval", str(out), "--iw-samples", "2"]) == 0
    assert _final(out)["nll"] == pytest.approx(final["nll"], rel=1e-6)


def test_explicit_split_files_override_those_in_data_path(tmp_path: Path) -> None:
    from lagvae.config import DataConfig
    from lagvae.data import build_data

    paths = _split_files(tmp_path)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for name in ("train", "valid", "test"):
        (decoy / f"{name}.txt").write_text("decoy words only\nmore decoy words\n")
    only_train = build_data(DataConfig(name="text", path=str(decoy), train_path=str(paths["train"])))
    assert "decoy" not in only_train.vocab.stoi and len(only_train.train) == 5
    assert (len(only_train.val), len(only_train.test)) == (2, 2)  # valid and test still from data.path
    every = build_data(DataConfig(name="text", path=str(decoy), **{f"{s}_path": str(p) for s, p in paths.items()}))
    assert (len(every.train), len(every.val), len(every.test)) == (5, 3, 2)


# ---- 6. method specs with a parameter (compare --methods) ---------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown method 'nope'; choose from vae, vae-anneal, aggressive,"),
        ("beta-anneal=0.5", "unknown method 'beta-anneal'"),
        ("agressive-anneal", "unknown method 'agressive-anneal'; did you mean aggressive-anneal? choose from vae,"),
        (
            "vae=1",
            "method 'vae' takes no parameter "
            "(only beta, free-bits, savae, pretrain-fb, bn-vae, delta-vae, du-vae, mdr do)",
        ),
        ("beta=x", "method 'beta=x': train.beta: cannot read 'x' as float"),
        ("savae=1.5", "method 'savae=1.5': train.savae.steps: cannot read '1.5' as int"),
        ("free-bits=-1", "method 'free-bits=-1': train.free_bits must be >= 0, got -1.0"),
        ("beta=-0.5", "method 'beta=-0.5': train.beta must be >= 0, got -0.5"),
        ("savae=-2", "method 'savae=-2': train.savae.steps must be >= 0, got -2"),
    ],
)
def test_bad_method_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_method(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_compare_refuses_a_bad_method_parameter_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid, plan = tmp_path / "grid", tmp_path / "plan.txt"
    for run in ([], ["--plan", str(plan)]):
        argv = ["compare", "synthetic", "--methods", "vae,beta=x", "--out", str(grid), "--epochs", "1", *run]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == "lagvae: error: method 'beta=x': train.beta: cannot read 'x' as float\n"
        assert not grid.exists() and not plan.exists()


def test_train_refuses_a_negative_free_bits_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(out, "--target", "-1", method="free-bits") == 2
    assert _error_lines(capsys.readouterr().err) == ["lagvae: error: train.free_bits must be >= 0, got -1.0"]
    assert not out.exists()


@pytest.mark.parametrize(
    ("spec", "method", "field", "fields"),
    [
        ("beta=0.8", "beta", "beta", {"beta": 0.8, "schedule": "constant", "strategy": "joint"}),
        ("beta=0", "beta", "beta", {"beta": 0.0, "schedule": "constant"}),
        ("free-bits=0.5", "free-bits", "free_bits", {"free_bits": 0.5, "kl_term": "free-bits", "strategy": "joint"}),
        ("savae=5", "savae", "savae.steps", {"savae.steps": 5, "strategy": "savae", "kl_start": 1.0}),
        # K = 0: the encoder's q, unrefined
        ("savae=0", "savae", "savae.steps", {"savae.steps": 0, "strategy": "savae"}),
        ("aggressive-anneal", "aggressive-anneal", None, {"strategy": "aggressive", "kl_start": 0.1, "warm_up": 10}),
    ],
)
def test_method_specs_set_their_config_fields(
    spec: str, method: str, field: str | None, fields: dict[str, Any]
) -> None:
    name, overrides = parse_method(spec)
    assert name == method
    config = make_config("synthetic", name, overrides=overrides)
    assert config.train.method == method
    flat = flatten(to_dict(config.train))
    assert {key: flat[key] for key in fields} == fields
    # the parameter sets its one field and nothing else of the method's own configuration
    plain = flatten(to_dict(make_config("synthetic", name).train))
    assert {key for key, value in flat.items() if value != plain[key]} == ({field} if field else set())


def test_a_grid_passes_each_methods_parameter_to_its_runs(tmp_path: Path) -> None:
    grid = Grid("synthetic", ("vae", "free-bits=0.5", "savae=3", "beta=0.2"), (0, 1), tmp_path, overrides=("x.y=1",))
    specs = {(s.label, s.seed): s for s in grid.specs()}
    assert len(specs) == 8
    assert specs[("free-bits=0.5", 1)].method == "free-bits"
    assert specs[("free-bits=0.5", 1)].overrides == ("train.free_bits=0.5", "x.y=1")  # the method's own first
    assert specs[("savae=3", 0)].overrides == ("train.savae.steps=3", "x.y=1")
    assert specs[("vae", 0)].overrides == ("x.y=1",)
    assert specs[("beta=0.2", 0)].out == tmp_path / "beta=0.2" / "seed0"
    lines = [line for line in plan_commands(grid) if "--method savae" in line]
    assert len(lines) == 2 and all("--set train.savae.steps=3 --set x.y=1" in line for line in lines)


def test_retest_without_resume_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "synthetic", "--retest", "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "--retest tests a finished run again: it needs --resume" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
