"""Running the `digitgen` CLI as a user does, in a process of its own: what the recovery and interruption tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATS = ["test_recon_nats", "test_kl_nats", "test_neg_elbo_nats", "test_nll_is_nats"]


def _cli(args, env_extra=None, **kw):
    from conftest import suite_threads

    env = {**suite_threads(dict(os.environ)), "PREFECT_LOGGING_LEVEL": "WARNING", **(env_extra or {})}  # not a Dask
    # cluster's thread limits left in this process
    env.pop("DIGITGEN_DATA_SOURCE", None)
    return [sys.executable, "-m", "digitgen.cli", *args], env


def _settings(data_root, out, name, epochs=3):
    return [
        "run",
        "--epochs",
        str(epochs),
        "--train-limit",
        "6000",
        "--test-limit",
        "1000",
        "--is-samples",
        "10",
        "--quality-samples",
        "500",
        "--batch-size",
        "128",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--run-name",
        name,
        "--device",
        "cpu",
        "--no-progress",
    ]


def _candidate(data_root, out, name, *extra):
    """A run that may challenge the champion: conftest.CANDIDATE's model and evaluation at the CLI's default batch
    size; all the data, so a data root with its judge."""
    from conftest import CANDIDATE

    flags = []
    for key in ("epochs", "hidden", "latent_dim", "is_samples", "quality_samples"):
        value = CANDIDATE[key]
        flags += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return [
        "run",
        *flags,
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--run-name",
        name,
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _digitgen(*args, env=None):
    """`digitgen ARGS` in a process of its own, with this environment and `env` on top."""
    return subprocess.run(
        [sys.executable, "-m", "digitgen.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
