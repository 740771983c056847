"""A user's first hour (issue 25): the cost estimate, the epoch and result lines, finished runs left alone,
the README's own-data recipe, readable figures, and messages that say what to type."""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from lagvae.cli import main
from lagvae.plots import image_grid, method_styles, metric_curves_figure, reconstruction_figure, sample_figure
from lagvae.training.alarm import COLLAPSE, KL_WITHOUT_INFORMATION, alarm_epochs, alarm_message, epoch_ranges
from lagvae.training.cost import DecodeCost, cost_line
from tests.test_cli import TINY

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "fixtures" / "corpus"


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "synthetic", "--method", "aggressive", "--out", str(out), *TINY, *extra]


def test_the_terminal_tells_the_run_estimate_epochs_and_result(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(out)) == 0
    captured = capsys.readouterr()
    lines = [line.removeprefix("lagvae: ") for line in captured.err.splitlines()]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "final.json").read_text())
    # the estimate comes before the first epoch's line, with its three parts
    estimate = next(i for i, line in enumerate(lines) if line.startswith("cost estimate: about "))
    epochs = [i for i, line in enumerate(lines) if re.match(r"epoch \d+: validation ELBO", line)]
    assert len(epochs) == len(records) == 2 and estimate < epochs[0]
    assert all(part in lines[estimate] for part in ("training ", "validation ", "test ", "K = 8 on 16 examples"))
    # one line per epoch with the record's own numbers
    for i, record in zip(epochs, records, strict=True):
        line = lines[i]
        assert f"validation ELBO {record['elbo']:.2f}" in line and f"KL {record['kl']:.2f}" in line
        assert f"mi_full {record['mi_full']:.2f}" in line and f"AU {record['au']}" in line
        assert f"aggressive {'on' if record['aggressive'] else 'off'}" in line
    # stdout: one result line, not final.json
    (result,) = captured.out.strip().splitlines()
    assert result.startswith(f"result: test NLL {final['nll']:.2f} (IW, K = 8), KL {final['kl']:.2f}, ")
    assert f"I_q {final['mi_full']:.2f}, AU {final['au']}; 2 epochs" in result and f"run folder: {out}" in result
    # --json: final.json for scripts, and nothing else on stdout
    assert main(_train(tmp_path / "json", "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "json" / "final.json").read_text())


def test_the_estimate_is_told_again_from_plain_steps_once_aggressive_mode_ends(tmp_path, capsys, monkeypatch):
    """The first estimate prices every epoch at an aggressive step's cost; the plain steps after the switch
    are timed and the rest of the run priced from them."""
    from lagvae.training.aggressive import AggressiveStrategy

    def switch_after_epoch_0(self, val):  # as end_epoch does once validation I_q stops rising
        self.aggressive = False

    monkeypatch.setattr(AggressiveStrategy, "end_epoch", switch_after_epoch_0)
    assert main(_train(tmp_path / "run", "--epochs", "3")) == 0
    lines = [line.removeprefix("lagvae: ") for line in capsys.readouterr().err.splitlines()]
    told = [i for i, line in enumerate(lines) if line.startswith("cost estimate")]
    ended = next(i for i, line in enumerate(lines) if line.startswith("aggressive mode ended after epoch 0"))
    first_epoch_1 = next(i for i, line in enumerate(lines) if line.startswith("epoch 1: "))
    assert len(told) == 2 and told[0] < ended < told[1] < first_epoch_1
    assert "in all" in lines[told[0]] and "upper bound" in lines[told[0]]
    # timed over epoch 1's 3 steps, once they are over: epoch 1's validation and epoch 2 remain
    again = lines[told[1]]
    assert again.startswith("cost estimate, aggressive mode over: about ") and " to go, at most: " in again
    assert "training " in again and "(3 steps, 2 epochs of 3, " in again and "upper bound" not in again


def test_a_finished_run_resumed_says_so_and_is_tested_again_only_when_asked(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(out)) == 0
    stamp = (out / "final.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_train(out, "--resume")) == 0
    captured = capsys.readouterr()
    assert "holds a finished run" in captured.err and "--retest" in captured.err
    assert "test: K = " not in captured.err and (out / "final.json").stat().st_mtime_ns == stamp
    assert captured.out.startswith("result: test NLL ")  # the finished run's result, as when it ended
    assert main(_train(out, "--resume", "--retest")) == 0
    assert "test: K = 8" in capsys.readouterr().err and (out / "final.json").stat().st_mtime_ns != stamp
    # more epochs: not finished, so it trains on and tests
    assert main(_train(out, "--resume", "--epochs", "3")) == 0
    assert json.loads((out / "final.json").read_text())["epochs"] == 3


def test_the_cost_estimate_adds_steps_validations_and_test_and_names_the_cuts_above_an_hour():
    from lagvae.config import RunConfig

    config = RunConfig()
    config.eval.iw_samples = 500
    decode = DecodeCost(per_pair=1e-3, per_example=0.0)
    common = {"steps_per_epoch": 100, "decode": decode, "n_val": 1000, "n_test": 1000, "vocab": 20_004}
    line, total = cost_line(config, per_step=2.0, steps_left=1000, epochs_left=10, aggressive=False, **common)
    # training 2 x 1000 s, validation 10 epochs x 1000 examples x 1 ms, test 1000 examples x K 500 x 1 ms
    assert total == pytest.approx(2000 + 10 + 500)
    assert line.startswith("cost estimate: about 42 min in all") and "vocabulary 20,004" in line
    assert "Above an hour" not in line
    line, again = cost_line(config, per_step=2.0, steps_left=1000, epochs_left=10, aggressive=False,
                            after_aggressive=True, **common)  # fmt: skip
    assert again == total and line.startswith("cost estimate, aggressive mode over: about 42 min to go, at most")
    line, total = cost_line(config, per_step=4.0, steps_left=1000, epochs_left=10, aggressive=True, **common)
    assert total > 3600 and "upper bound" in line
    for cut in ("--size cpu", "data.max_vocab", "data.max_len", "data.eval_limit", "eval.iw_samples", "--epochs"):
        assert cut in line


def test_lr_rule_and_aggressive_switch_are_told(tmp_path, caplog):
    from lagvae.experiments.presets import make_config
    from lagvae.training.loop import Trainer
    from lagvae.training.lr_rule import LRDecision

    config = make_config("synthetic", "aggressive", overrides=["data.n_train=32", "data.n_val=16", "data.n_test=16"])
    config.progress = False
    trainer = Trainer(config, tmp_path / "run")
    trainer.strategy.aggressive = False  # as end_epoch leaves it when I_q stopped rising
    trainer.lr_rule.decays, trainer.lr_rule.lr = 5, 0.03125
    record = {"epoch": 7, "elbo": -50.0, "kl": 1.5, "mi_full": 1.2, "au": 2, "aggressive": True}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lagvae"):
        trainer._tell_epoch(record, LRDecision(improved=False, decay=True, stop=True), aggressive=True, seconds=3)
    told = [r.getMessage() for r in caplog.records]
    assert told[0] == "epoch 7: validation ELBO -50.00, KL 1.50, mi_full 1.20, AU 2, aggressive on; 3 s"
    assert told[1].startswith("aggressive mode ended after epoch 7")
    assert "learning rate x 0.5 -> 0.0312 (decay 5 of 5)" in told[2] and told[3].startswith("training stops after")


def test_a_model_without_a_latent_shows_its_log_likelihood_alone():
    from lagvae.training.epoch import epoch_line

    record = {"epoch": 4, "elbo": -430.69, "kl": 0.0, "mi_full": 0.0, "au": 0, "aggressive": False}
    line = epoch_line(record, best=True, aggressive_method=False, seconds=24, latent=False)
    assert line == "epoch 4: validation log-likelihood -430.69 (best); 24 s"  # no KL 0, AU 0 to read as collapse
    with_z = epoch_line(record, best=False, aggressive_method=False, seconds=24)
    assert with_z == "epoch 4: validation ELBO -430.69, KL 0.00, mi_full 0.00, AU 0; 24 s"


def test_the_readme_own_data_recipe_runs(tmp_path, capsys):
    """The README's recipe block, on the fixture corpus, reduced to 1 epoch and 2 IW samples (the rest of its
    settings as written); the README states what the full recipe cost."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Your own data on a CPU in about 15 minutes")[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]
    train = next(c for c in commands if c[:2] == [".venv/bin/lagvae", "train"])
    args = [a.replace("my_corpus", str(CORPUS)).replace("runs/mine", str(tmp_path / "mine")) for a in train[1:]]
    assert "--train-limit" in args and "--size" in args and "data.max_len=60" in args
    reduced = [*args, "--epochs", "1", "--set", "eval.iw_samples=2", "--threads", "1", "--no-progress"]
    assert main(reduced) == 0
    captured = capsys.readouterr()
    assert "cost estimate: about" in captured.err and captured.out.startswith("result: test NLL ")
    stated = re.search(r"estimated \d+ min.{0,80}?measured \d+ min", section.split("### ")[0], re.S)
    assert stated, "the README states the recipe's estimated and measured times"


def test_compare_curves_give_each_method_its_own_colour_and_say_what_the_elbo_axis_clips():
    styles = method_styles(12)
    assert len(set(styles)) == 12
    colours = np.array([c for c, _ in styles[:10]])
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(10)
    assert gaps.min() > 0.15  # no two of the first ten are shades of one hue

    def run(first: float, label_offset: float) -> list[dict]:
        return [{"epoch": e, "elbo": (first if e == 0 else -100.0 + e + label_offset), "kl": 1.0} for e in range(6)]

    curves = {"vae": [run(-101.0, 0.0), run(-101.0, 0.2)], "aggressive": [run(-400.0, 0.5)]}
    fig = metric_curves_figure(curves, ("elbo", "kl"))
    elbo, kl = fig.axes[:2]
    assert [line.get_color() for line in elbo.lines[:2]] != [elbo.lines[0].get_color()] * 2
    notes = [t.get_text() for t in elbo.texts]
    assert len(notes) == 1 and "1 early points below" in notes[0] and "lowest -400.0" in notes[0]
    assert elbo.get_ylim()[0] > -400 and not kl.texts
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["vae (2)", "aggressive (1)"]
    # nothing far below: every epoch shown, nothing said
    fig = metric_curves_figure({"vae": [run(-101.0, 0.0)]}, ("elbo",))
    assert not fig.axes[0].texts and fig.axes[0].get_ylim()[0] <= -101.0


def test_image_reconstructions_are_labelled_rows_and_samples_say_their_seed():
    rng = np.random.default_rng(0)
    originals, recon = rng.random((12, 6, 6)), rng.random((12, 6, 6))
    fig = reconstruction_figure(originals, recon, 10, "test images, seed 3")
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["input", "reconstruction"] * 2
    # each strip shows its images in order: the inputs above the reconstructions of the same inputs
    for ax, images in zip(axes, (originals[:10], recon[:10], originals[10:], recon[10:]), strict=True):
        assert np.allclose(ax.images[0].get_array(), image_grid(images, len(images)))
    # a pair's two strips sit together; the next pair is set apart by a wider gap
    boxes = [ax.get_position() for ax in axes]
    assert boxes[1].y1 - boxes[2].y1 > 1.2 * (boxes[0].y1 - boxes[1].y1)
    assert fig._suptitle.get_text() == "test images, seed 3"
    fig = sample_figure(rng.random((5, 6, 6)), 5, "5 samples of p(x|z), z ~ N(0, I), seed 7")
    assert "seed 7" in fig._suptitle.get_text()


def test_alarm_messages_read_as_sentences_and_the_two_alarms_are_told_apart():
    record = {"epoch": 4, "au": 3, "kl": 5.0, "mi_full": 0.2}
    message = alarm_message(KL_WITHOUT_INFORMATION, record, 2, aggressive=True)
    assert "if it persists, try a lower KL target" in message
    records = [{"epoch": e, "alarm": a} for e, a in enumerate([None, COLLAPSE, COLLAPSE, None, KL_WITHOUT_INFORMATION])]
    assert alarm_epochs(records) == {COLLAPSE: [1, 2], KL_WITHOUT_INFORMATION: [4]}
    assert epoch_ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
