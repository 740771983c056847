"""Starting or resuming a run in a folder: the folder's run identity, then train and test."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lagvae.config import RunConfig, apply_override, flatten, load_json, to_dict
from lagvae.errors import ConfigError
from lagvae.training.loop import Trainer
from lagvae.training.run_context import RunContext
from lagvae.training.run_folder import CONFIG, FINAL, LAST, RunFolder

log = logging.getLogger("lagvae")

RESUMABLE = (
    "train.epochs", "train.checkpoint_minutes", "threads", "progress", "device",
    "eval.alarm", "log.tensorboard", "log.every_steps",
)  # fmt: skip

RESUME_MODES = ("no", "yes", "auto")


def train_and_evaluate(
    config: RunConfig,
    out_dir: Path | str,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    bar_position: int = 0,
    retest: bool = False,
) -> dict[str, Any]:
    """Train `config` into `out_dir`, then test the best model; returns final.json's dict.

    A folder that already holds a run (config.json or a checkpoint) is never silently reused:
    - resume=True ("yes") continues it from last.pt; config.json there is the truth, and only the fields in
      RESUMABLE may differ from `config`;
    - resume="auto" continues it when last.pt exists, else starts afresh, provided the folder's config.json
      (a run killed before its first checkpoint) asks for the same run;
    - overwrite=True deletes the old run's files first;
    - otherwise it is a one-line error.
    A resumed run that is finished (final.json written, no epoch left to train) is not tested again: its
    final.json is returned as it is, unless `retest`.
    """
    mode = ("yes" if resume else "no") if isinstance(resume, bool) else resume
    if mode not in RESUME_MODES:
        raise ConfigError(f"unknown resume mode {resume!r}; choose from {', '.join(RESUME_MODES)}")
    run = RunContext.join(out_dir, config.device)
    with run.held():  # rank 0 locks the folder; a failure here is left for the other ranks to quote
        config, mode = _run_identity(config, run, mode, overwrite)
        trainer = Trainer(config, run, bar_position=bar_position)
        if mode == "yes":
            trainer.resume()
            final = run.folder.read_json(FINAL)  # every rank reads it, so all of them stop or all go on
            if final is not None and not trainer.training_left() and not retest:
                log.info(f"{run.folder.path} holds a finished run (final.json); --retest tests it again")
                return final
        trainer.fit()
        return trainer.test()


def _run_identity(config: RunConfig, run: RunContext, mode: str, overwrite: bool) -> tuple[RunConfig, str]:
    """The config to train and whether to resume ("yes") or start ("no"), after the folder's run identity is
    checked; a folder whose run is to be replaced is cleared here."""
    folder, world = run.folder, run.world
    if overwrite and mode != "no":
        raise ConfigError("--overwrite starts a new run and --resume continues one; choose one")
    if mode == "auto":
        mode = "yes" if folder.file(LAST).exists() else "no"
        if mode == "no" and folder.file(CONFIG).exists():
            _same_run(config, folder)  # refuses a different run; the same one restarts from scratch
            overwrite = True
    if mode == "yes":
        config = _resumed_config(config, folder)
    elif folder.holds_run():
        if not overwrite:
            raise ConfigError(
                f"{folder.path} already holds a run; --resume continues it, --overwrite deletes it and starts "
                "again, --resume auto continues it when it can and starts otherwise"
            )
        world.barrier()  # every rank has read the folder before rank 0 clears it
        if world.is_main:
            folder.clear()
    return config, mode


def _resumed_config(requested: RunConfig, folder: RunFolder) -> RunConfig:
    """The folder's saved config with the RESUMABLE fields of `requested`; refuses any other difference."""
    if not folder.file(CONFIG).exists():
        raise ConfigError(f"nothing to resume: {folder.file(CONFIG)} does not exist")
    if not folder.file(LAST).exists():
        raise ConfigError(f"nothing to resume: {folder.file(LAST)} does not exist (--resume auto starts instead)")
    return _same_run(requested, folder)


def _same_run(requested: RunConfig, folder: RunFolder) -> RunConfig:
    saved = load_json(folder.file(CONFIG))
    flat_saved, flat_new = flatten(to_dict(saved)), flatten(to_dict(requested))
    # `schema` says how the saved file was written, not how the run trains
    changed = [k for k in flat_new if flat_new[k] != flat_saved.get(k) and k not in (*RESUMABLE, "schema")]
    if changed:
        raise ConfigError(
            f"{folder.path} holds a different run; these settings differ: {', '.join(changed)}"
            f" (a resume may change only {', '.join(RESUMABLE)})"
        )
    for key in RESUMABLE:
        apply_override(saved, f"{key}={flat_new[key]}")
    return saved
