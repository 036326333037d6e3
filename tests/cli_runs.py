"""Running the `digitgen` CLI as a user does, in a process of its own: what the recovery and interruption tests share."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATS = ["test_recon_nats", "test_kl_nats", "test_neg_elbo_nats", "test_nll_is_nats"]


def _cli(args, env_extra=None):
    from harness import suite_threads

    env = {**suite_threads(dict(os.environ)), "PREFECT_LOGGING_LEVEL": "WARNING", **(env_extra or {})}  # not a Dask
    # cluster's thread limits left in this process
    env.pop("DIGITGEN_DATA_SOURCE", None)
    return [sys.executable, "-m", "digitgen.cli", *args], env


# A trial long enough to be caught mid-training (6,000 images, 3 epochs): the settings of `_settings`' runs.
TRIAL = {
    "epochs": 3,
    "train_limit": 6000,
    "test_limit": 1000,
    "is_samples": 10,
    "quality_samples": 500,
    "batch_size": 128,
    "device": "cpu",
}


def _flags(settings: dict) -> list[str]:
    """CLI flags for flow settings: {"latent_dim": 8, "hidden": [64]} -> --latent-dim 8 --hidden 64."""
    flags = []
    for key, value in settings.items():
        flags += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return flags


def _run(data_root, out, name, settings: dict) -> list[str]:
    return [
        "run",
        *_flags(settings),
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--run-name",
        name,
        "--no-progress",
    ]


def _settings(data_root, out, name, **changes):
    """`digitgen run` of a TRIAL, with `changes` to its settings (e.g. epochs=6)."""
    return _run(data_root, out, name, {**TRIAL, **changes})


def _candidate(data_root, out, name, **changes):
    """A run that may challenge the champion: conftest.CANDIDATE's model and evaluation at the CLI's default batch
    size, with `changes` (e.g. seed=2); all the data, so a data root with its judge."""
    from conftest import CANDIDATE

    keys = ("epochs", "hidden", "latent_dim", "is_samples", "quality_samples", "device")
    return _run(data_root, out, name, {**{k: CANDIDATE[k] for k in keys}, **changes})


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _digitgen(*args, env=None, timeout=120):
    """`digitgen ARGS` in a process of its own, with this environment and `env` on top."""
    return subprocess.run(
        [sys.executable, "-m", "digitgen.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


# Libraries that take seconds to import: a command that does not use one must not import it.
HEAVY = ("torch", "prefect", "mlflow", "great_expectations", "pandas", "matplotlib")
# `digitgen ARGS` (sys.argv[1:]), then, as stdout's last line, which of HEAVY it had imported when it ended.
LOADED_AT_EXIT = f"""
import atexit, sys
atexit.register(lambda: print("LOADED", sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})), flush=True))
from digitgen.cli import main
sys.argv[0] = "digitgen"
main()
"""


def _digitgen_loading(*args, timeout=120) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`digitgen ARGS` in a process of its own; the finished process, and the HEAVY libraries it had imported."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED_AT_EXIT, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    last = (done.stdout.strip().splitlines() or [""])[-1]
    assert last.startswith("LOADED ["), (done.stdout[-500:], done.stderr[-2000:])
    return done, ast.literal_eval(last.removeprefix("LOADED "))


def _refused_without_torch(*args, timeout=120) -> subprocess.CompletedProcess:
    """`digitgen ARGS` in a process of its own, which must end without having imported torch (over a second of a
    core): a refusal answered at once. Returns the finished process (its stdout holds only LOADED_AT_EXIT's line)."""
    done, loaded = _digitgen_loading(*args, timeout=timeout)
    assert "torch" not in loaded and len(done.stdout.strip().splitlines()) == 1, (done.stdout, done.stderr[-2000:])
    return done
