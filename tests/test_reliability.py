"""Nothing a user can do corrupts a run folder: every failure is one line (exit 2) naming the file or field, eval
never marks an unfinished run done, no symlink in a run folder is written through, and SIGTERM is honoured in
every phase (issue 24; README "Reliability")."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from lagvae.cli import main
from lagvae.config import ConfigError, apply_override
from lagvae.experiments.compare import Grid, run_grid
from lagvae.experiments.presets import make_config
from lagvae.training.build import validate
from tests.test_cli import TINY
from tests.test_kill_resume import _outcome
from tests.test_run_folder import _errors, _snapshot, _train

SETS = tuple(value for flag, value in zip(TINY, TINY[1:], strict=False) if flag == "--set")


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's single `lagvae: error` line (no traceback got past the CLI)."""
    err = capsys.readouterr().err
    errors = _errors(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _sigterm_self() -> None:
    """SIGTERM this process, as a scheduler would; only while the Trainer's handler is installed (the default
    action would end pytest itself)."""
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None), "no SIGTERM handler"
    os.kill(os.getpid(), signal.SIGTERM)


# ---- 1. OS errors: a full disk, a read-only folder, a folder that does not exist -----------------------------
def test_a_full_disk_while_last_pt_is_written_keeps_the_previous_one_and_is_one_line(tmp_path, capsys, monkeypatch):
    from lagvae import atomic
    from lagvae.training import checkpoint

    out = tmp_path / "run"
    real, writes = atomic.atomic_write, []

    def full_at_second_last_pt(path, write):  # type: ignore[no-untyped-def]
        if path.name == "last.pt":
            writes.append(path)
            if len(writes) == 2:  # epoch 1's: half of it reaches the disk, then the disk is full

                def failing(f):  # type: ignore[no-untyped-def]
                    f.write(b"\0" * 1000)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                return real(path, failing)
        return real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", full_at_second_last_pt)
    capsys.readouterr()
    assert _train(out) == 2
    error = _one_error(capsys)
    assert str(out / "last.pt") in error and "No space left on device" in error
    assert not list(out.glob(".*.tmp"))  # no temporary left behind
    assert torch.load(out / "last.pt", weights_only=True)["state"]["epoch"] == 1  # epoch 0's, loadable
    monkeypatch.undo()
    assert _train(out, "--resume") == 0  # and the run continues from it


def test_report_into_a_read_only_folder_is_one_line_naming_the_page(run, capsys, monkeypatch):
    from lagvae import atomic

    def read_only(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    error = _one_error(capsys)
    assert str(run / "report.html") in error and "Read-only file system" in error
    assert not (run / "report.html").exists()


def test_sample_out_into_a_missing_folder_is_one_line_before_sampling(run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["sample", str(run), "--out", str(tmp_path / "nowhere" / "samples.txt")]) == 2
    assert str(tmp_path / "nowhere") in _one_error(capsys) and not (tmp_path / "nowhere").exists()


# ---- 1. sizes and ranges: refused by the config validation, naming the field --------------------------------
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.embed_dim=0", "model.embed_dim"),
        ("model.enc_hidden=-1", "model.enc_hidden"),
        ("model.dec_hidden=0", "model.dec_hidden"),
        ("train.seed=9223372036854775808", "train.seed"),  # 2**63: past what the test's seed offsets leave
        ("data.seed=-1", "data.seed"),  # numpy takes no negative seed
        ("train.lr=0", "train.lr"),
        ("eval.iw_samples=-1", "eval.iw_samples"),
        ("train.optimizer=rmsprop", "train.optimizer"),
        ("model.du.dropout=1", "model.du.dropout"),
        ("train.cyclical.ratio=0", "train.cyclical.ratio"),
        ("model.posterior=laplace", "model.posterior"),
    ],
)
def test_the_config_validation_refuses_with_the_fields_name(override, field):
    config = make_config("synthetic", "vae")
    apply_override(config, override)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        validate(config)
    assert "\n" not in str(err.value)


def test_a_size_of_zero_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    capsys.readouterr()
    assert _train(tmp_path / "run", "--set", "model.embed_dim=0") == 2
    assert "model.embed_dim must be positive" in _one_error(capsys) and not (tmp_path / "run").exists()


# ---- 1. files whose syntax is fine but whose structure is not ------------------------------------------------
def _edit_checkpoint(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    saved = torch.load(path, weights_only=True)
    edit(saved)
    torch.save(saved, path)


GENERATION = {
    "eval": ["--iw-samples", "2"],
    "sample": ["-n", "2"],
    "interpolate": ["1 2 3", "4 5 6", "--steps", "2"],
}


@pytest.mark.parametrize("command", list(GENERATION))
def test_a_checkpoint_of_another_model_size_is_one_line_naming_the_weight(run, capsys, command):
    _edit_checkpoint(run / "best.pt", lambda s: s["model"].__setitem__("encoder.lstm.weight_ih_l0", torch.zeros(8, 50)))
    capsys.readouterr()
    assert main([command, str(run), *GENERATION[command]]) == 2
    error = _one_error(capsys)
    assert str(run / "best.pt") in error and "encoder.lstm.weight_ih_l0 is [8, 50] there" in error


@pytest.mark.parametrize("command", list(GENERATION))
def test_a_checkpoint_with_missing_keys_is_one_line_naming_them(run, capsys, command):
    _edit_checkpoint(run / "best.pt", lambda s: s["model"].pop("encoder.embed.weight"))
    capsys.readouterr()
    assert main([command, str(run), *GENERATION[command]]) == 2
    error = _one_error(capsys)
    assert str(run / "best.pt") in error and "missing encoder.embed.weight" in error
    torch.save({"epoch": 0}, run / "best.pt")  # no weights at all
    assert main([command, str(run), *GENERATION[command]]) == 2
    assert "best.pt lacks model" in _one_error(capsys)


@pytest.mark.parametrize("part", ["optimizers", "model"])
def test_a_last_pt_without_its_optimiser_state_or_of_another_size_is_one_line(run, capsys, part):
    if part == "optimizers":
        _edit_checkpoint(run / "last.pt", lambda s: s.pop("optimizers"))
        expected = "last.pt lacks optimizers"
    else:
        _edit_checkpoint(run / "last.pt", lambda s: s["model"].__setitem__("decoder.lstm.bias_ih_l0", torch.zeros(3)))
        expected = "last.pt does not fit this model: decoder.lstm.bias_ih_l0 is [3] there"
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(run, "--resume", "--epochs", "3") == 2
    assert expected in _one_error(capsys)
    assert _snapshot(run) == before


def test_a_vocabulary_that_does_not_match_the_checkpoint_is_one_line_naming_it(run, capsys):
    (run / "vocab.json").write_text(json.dumps(["a", "b"]))
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "2"]) == 2
    error = _one_error(capsys)
    assert f"{run / 'vocab.json'} has 6 entries, the checkpoint 1,004" in error


@pytest.mark.parametrize(
    ("section", "value", "expected"),
    [("train", 5, "config section 'train' is a number"), ("model", [1], "config section 'model' is a list")],
)
def test_a_config_json_section_of_the_wrong_type_is_one_line(run, capsys, section, value, expected):
    saved = json.loads((run / "config.json").read_text())
    saved[section] = value
    (run / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    error = _one_error(capsys)
    assert str(run / "config.json") in error and expected in error


def test_a_config_json_value_of_the_wrong_type_is_one_line_naming_the_key(run, capsys):
    saved = json.loads((run / "config.json").read_text())
    saved["model"]["enc_hidden"] = "fifty"
    (run / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["sample", str(run)]) == 2
    assert "config key 'model.enc_hidden' is a string" in _one_error(capsys)


@pytest.mark.parametrize(("line", "expected"), [("5", "is not an epoch's record"), ('{"a": 1}', "lacks step, epoch")])
@pytest.mark.parametrize("command", ["eval", "report"])
def test_a_metrics_line_that_is_not_a_record_is_one_line_naming_the_file(run, capsys, line, expected, command):
    (run / "metrics.jsonl").write_text(line + "\n")
    capsys.readouterr()
    assert main([command, str(run)]) == 2
    error = _one_error(capsys)
    assert f"{run / 'metrics.jsonl'} line 1" in error and expected in error


def test_a_test_nll_csv_that_does_not_parse_is_one_line_naming_it(run, tmp_path, capsys):
    grid = tmp_path / "grid"
    for method in ("vae", "aggressive"):
        shutil.copytree(run, grid / method / "seed0")
    (grid / "vae" / "seed0" / "test_nll.csv").write_text("index,nll\n0,not-a-number\n")
    capsys.readouterr()
    assert main(["report", str(grid)]) == 2
    assert f"cannot read {grid / 'vae' / 'seed0' / 'test_nll.csv'}" in _one_error(capsys)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is not a .npy file"),  # zero-sized
        (bytes(range(256)) * 4, "is not a .npy file"),  # random bytes: not "pickled data"
        ("object", "holds Python objects"),
        ("no-images", "holds no pixels"),
        ("truncated", "is a damaged .npy file"),
    ],
)
def test_a_corrupt_image_npy_is_one_line_naming_it(tmp_path, content, expected):
    from lagvae.data.images import read_image_array

    path = tmp_path / "images.npy"
    if content == "object":
        np.save(path, np.array([{"pixels": 1}, None], dtype=object), allow_pickle=True)
    elif content == "no-images":
        np.save(path, np.zeros((0, 4, 4), dtype=np.float32))
    elif content == "truncated":
        np.save(path, np.zeros((5, 4, 4), dtype=np.float32))
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_image_array(path)
    message = str(err.value)
    assert str(path) in message and expected in message and "pickled" not in message and "\n" not in message


# ---- 2. eval never finishes a run, and never rewrites one ----------------------------------------------------
def test_eval_refuses_a_run_stopped_in_epoch_1_and_compare_then_resumes_it(
    tmp_path, capsys, monkeypatch, inline_workers
):
    from lagvae.training.strategies import JointStrategy

    grid = tmp_path / "grid"
    cell = grid / "vae" / "seed0"
    step, calls = JointStrategy.step, []

    def preempted_at_step_5(self, x, kl_weight, rows=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 5:  # epoch 1, step 2 of 3
            _sigterm_self()
        return step(self, x, kl_weight, rows)

    monkeypatch.setattr(JointStrategy, "step", preempted_at_step_5)
    capsys.readouterr()
    assert _train(cell, "--seed", "0") == 2
    assert "stopped by SIGTERM" in _one_error(capsys)
    monkeypatch.undo()
    before = _snapshot(cell)
    assert main(["eval", str(cell)]) == 2
    error = _one_error(capsys)
    assert "has not finished training" in error and "epoch 1 of 2" in error
    assert _snapshot(cell) == before and not (cell / "final.json").exists()
    results = run_grid(Grid("synthetic", ("vae",), (0,), grid, epochs=2, train_limit=48, overrides=SETS))
    assert results[("vae", 0)]["ok"], results
    records = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and (cell / "final.json").exists()


def test_eval_at_another_k_writes_beside_final_json_and_leaves_it_unchanged(run, capsys):
    final, nll = (run / "final.json").read_bytes(), (run / "test_nll.csv").read_bytes()
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "3", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (run / "final.json").read_bytes() == final and (run / "test_nll.csv").read_bytes() == nll
    assert json.loads((run / "eval_k3.json").read_text()) == printed and printed["iw_samples"] == 3
    assert len((run / "test_nll_k3.csv").read_text().splitlines()) == 1 + 16
    assert _train(run, "--overwrite") == 0 and not (run / "eval_k3.json").exists()  # a new run drops old re-tests


# ---- 3. no symlink in a run folder is written through --------------------------------------------------------
def test_a_lock_symlink_is_refused_and_its_target_untouched(run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("another user's file\n")
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(victim)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    error = _one_error(capsys)
    assert str(run / ".lock") in error and "symbolic link" in error
    assert victim.read_text() == "another user's file\n"


def test_a_metrics_symlink_is_refused_and_its_target_untouched(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("another user's file\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(victim)
    capsys.readouterr()
    assert _train(out, "--epochs", "1") == 2
    error = _one_error(capsys)
    assert str(out / "metrics.jsonl") in error and "symbolic link" in error
    assert victim.read_text() == "another user's file\n"


def test_the_write_probe_and_tensorboard_never_follow_a_symlink(tmp_path):
    from lagvae.training.run_folder import RunFolder
    from lagvae.training.tensorboard_log import TensorBoardLog

    victim, elsewhere = tmp_path / "victim.txt", tmp_path / "elsewhere"
    victim.write_text("kept\n")
    elsewhere.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".write-test").symlink_to(victim)
    RunFolder(out).create()  # the probe replaces the link, never truncates the file it points to
    assert victim.read_text() == "kept\n" and not (out / ".write-test").exists()
    (out / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match="tensorboard is a symbolic link"):
        TensorBoardLog(out, 0)
    assert not list(elsewhere.iterdir())


# ---- 5. SIGTERM in every phase: the last validation, the test ------------------------------------------------
def test_sigterm_in_the_last_validation_stops_and_resume_goes_straight_to_the_test(
    tmp_path, trained, capsys, monkeypatch
):
    from lagvae.training import loop

    out = tmp_path / "run"
    evaluate, calls = loop.evaluate, []

    def sigterm_in_validation_2(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            _sigterm_self()
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", sigterm_in_validation_2)
    capsys.readouterr()
    assert _train(out) == 2
    assert "stopped by SIGTERM after epoch 1" in _one_error(capsys)
    assert not (out / "final.json").exists()
    assert torch.load(out / "last.pt", weights_only=True)["state"]["epoch"] == 2
    monkeypatch.undo()
    assert _train(out, "--resume") == 0
    assert _outcome(out) == _outcome(trained)


def test_sigterm_in_the_test_stops_at_the_next_chunk_and_resume_tests_the_run(tmp_path, trained, capsys, monkeypatch):
    from lagvae.training import evaluation

    out = tmp_path / "run"
    on_chunk, chunks = evaluation.IWProgress.on_chunk, []

    def sigterm_at_chunk_1(self, pairs):  # type: ignore[no-untyped-def]
        chunks.append(pairs)
        if len(chunks) == 1:
            _sigterm_self()
        return on_chunk(self, pairs)

    monkeypatch.setattr(evaluation.IWProgress, "on_chunk", sigterm_at_chunk_1)
    capsys.readouterr()
    assert _train(out) == 2
    assert "stopped by SIGTERM during the test" in _one_error(capsys)
    assert len(chunks) == 1 and not (out / "final.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back
    monkeypatch.undo()
    assert _train(out, "--resume") == 0
    assert _outcome(out) == _outcome(trained)


# ---- 6. small ones -------------------------------------------------------------------------------------------
def test_a_byte_order_mark_is_not_part_of_the_first_word(tmp_path):
    from lagvae.config import DataConfig
    from lagvae.data import build_data

    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_bytes("\ufeffthe cat sat\nthe dog\n".encode())
    vocab = build_data(DataConfig(name="text", path=str(tmp_path))).vocab
    assert "the" in vocab.stoi and not any(w.startswith("\ufeff") for w in vocab.itos)


def test_compare_with_no_method_is_a_usage_error(tmp_path, capsys):
    capsys.readouterr()
    assert main(["compare", "synthetic", "--methods", ",", "--out", str(tmp_path / "grid")]) == 2
    assert "--methods ',' names no method" in _one_error(capsys) and not (tmp_path / "grid").exists()


def test_a_deleted_vocabulary_is_named_as_missing(run, capsys):
    (run / "vocab.json").unlink()
    capsys.readouterr()
    assert main(["sample", str(run)]) == 2
    error = _one_error(capsys)
    assert f"{run / 'vocab.json'} is missing" in error and "images" not in error
