"""The run folder: created once per run, held by one live run at a time, never shared between runs."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from pathlib import Path
from typing import IO

from prefect import task

from digitgen.config import RESUME_OVERRIDES, TRAINING_SETTINGS, PipelineConfig
from digitgen.errors import DigitgenError
from digitgen.io import write_json
from digitgen.limits import TRAINING, held
from models.checkpoint import CheckpointError, read_checkpoint
from tasks.common import logger
from tasks.track import check_store, open_run

_HELD: dict[str, IO] = {}  # run folders this process holds, with the open lock file that holds each
MAX_ATTEMPTS = 5  # runs of one flow run (its first, its retries, its re-runs after crashes) before it gives up


class RunFolderError(DigitgenError, RuntimeError):
    """The run folder is taken: by a live run, a complete run, or an interrupted run of other settings."""


def hold_run_folder(run_dir: Path) -> None:
    """Lock `<run_dir>/.lock` for the life of this process; refuse at once, naming the holder, if a live run has it."""
    key = str(run_dir.resolve())
    if key in _HELD:
        return
    handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 (held open on purpose: closing it releases the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(
            f"run folder {run_dir} is in use by a live run ({holder}); wait for it to end, or choose another --run-name"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _HELD[key] = handle


def release_run_folder(run_dir: str | Path) -> None:
    """A finished run lets go of its folder: `.lock` is removed while still held (a later run of the same name is
    refused as complete, not as live), then closed. Nothing happens where this process holds no lock on it."""
    handle = _HELD.pop(str(Path(run_dir).resolve()), None)
    if handle is not None:
        (Path(run_dir) / ".lock").unlink(missing_ok=True)
        handle.close()


def _saved_settings_match(run_dir: Path, config: PipelineConfig) -> None:
    """config.json must still say what the run's checkpoints were trained with (an edited file would mix runs)."""
    expected = config.model_dump(mode="json")  # as the checkpoints store their settings
    for path in sorted(run_dir.glob("checkpoints/*-epoch-*.pt")) + [run_dir / "vae.pt", run_dir / "ae.pt"]:
        if not path.exists():
            continue
        try:
            saved = read_checkpoint(path).get("config")
        except CheckpointError:
            continue  # a damaged checkpoint is reported where it is loaded
        if not isinstance(saved, dict):
            continue
        changed = [k for k in TRAINING_SETTINGS if k in saved and saved[k] != expected[k]]
        if changed:
            diffs = ", ".join(f"{k}: {saved[k]!r} in {path.name}, {expected[k]!r} in config.json" for k in changed)
            raise RunFolderError(
                f"run folder {run_dir}: config.json was changed after the run began ({diffs}); "
                "restore it, or start a new run with another --run-name"
            )


def run_config(settings: dict) -> PipelineConfig:
    """The run's settings from the flow's parameters (None: unset). A resumed run keeps its own settings. A run given
    no run_name is named after its flow run, so that a retried or re-run flow run finds its folder again and
    continues from its last complete epoch. A deployed run refuses paths that would resolve against its worker's
    working folder."""
    from prefect.runtime import deployment, flow_run

    if flow_run.id and flow_run.run_count > MAX_ATTEMPTS:
        raise RunFolderError(
            f"flow run {flow_run.name} has run {flow_run.run_count - 1} times without completing; "
            f"it is not run again (read its logs; resume it with resume=<its run folder>)"
        )
    given = {k: v for k, v in settings.items() if v is not None}
    if resume := given.pop("resume", None):
        config = PipelineConfig.for_resume(resume, **{k: v for k, v in given.items() if k in RESUME_OVERRIDES})
    else:
        if "run_name" not in given and flow_run.id:
            given["run_name"] = re.sub(r"[^A-Za-z0-9._-]", "-", f"{flow_run.name}-{flow_run.id[:8]}")
        config = PipelineConfig(**given)
    if deployment.id:
        relative = {
            f"{flag} ({env})": path
            for flag, env, path in (
                ("data_root", "DIGITGEN_DATA_ROOT", config.data_root),
                ("out", "DIGITGEN_OUT", config.out),
                ("data_source", "DIGITGEN_DATA_SOURCE", config.data_source),
            )
            if path and not path.is_absolute()
        }
        if relative:
            raise RunFolderError(
                "a deployed run needs absolute paths, or it would write into its worker's working folder: "
                + ", ".join(f"{k} is {v}" for k, v in relative.items())
                + "; `make deploy` sets DIGITGEN_DATA_ROOT and DIGITGEN_OUT as the deployments' job variables"
            )
    return config


def compute_slot():
    """Hold the global limit digitgen-training around a run's heavy stages (training, samplers, evaluation, figures):
    on a 2-core worker two runs computing at once each run about 10x slower, so runs take turns; the limit, created
    by `digitgen apply`, is one slot unless a team raises it."""
    return held(TRAINING, "This run's training and evaluation", logger())


@task
def start_run(config: PipelineConfig) -> str:
    """Create `<out>/<run_name>/` and write config.json, or reopen an interrupted run of the same settings."""
    run_dir = config.run_dir
    config.check_writable()
    store = check_store(config)  # a tracking server that is down, or a damaged champion record: now, not after training
    run_dir.mkdir(parents=True, exist_ok=True)
    hold_run_folder(run_dir)
    saved = run_dir / "config.json"
    if saved.exists():
        if (run_dir / "report.md").exists():
            raise RunFolderError(
                f"run folder {run_dir} already exists and holds a complete run; choose another --run-name (if its "
                f"model gate did not finish, `digitgen promote {run_dir}` runs it again)"
            )
        resumed = PipelineConfig.for_resume(run_dir)
        if not config.same_run_as(resumed):
            raise RunFolderError(
                f"run folder {run_dir} holds an interrupted run with other settings; resume it with "
                f"--resume {run_dir}, or choose another --run-name"
            )
        _saved_settings_match(run_dir, resumed)
        for stale in run_dir.rglob(".*.tmp"):  # half-written files of the interrupted run (we hold the folder now)
            stale.unlink(missing_ok=True)
        logger().info("Resuming the interrupted run in %s from its last complete epoch", run_dir.resolve())
        open_run(store, resumed, run_dir)
        return str(run_dir)
    if any(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        raise RunFolderError(
            f"run folder {run_dir} already exists and holds files but no run; choose another --run-name"
        )
    write_json(saved, config.model_dump(mode="json", exclude={"resume"}))
    logger().info("Run folder: %s", run_dir.resolve())
    open_run(store, config, run_dir)
    return str(run_dir)
