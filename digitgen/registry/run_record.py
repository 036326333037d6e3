"""A run folder's tie to its MLflow run (`mlflow.json`: the run id, written when the run starts), and the shape in
which a run's figures go to MLflow: metrics.json flattened with dots, per-epoch records as steps, the code's commit.
The store they are logged to: digitgen/registry/tracking.py."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from digitgen.io import write_json

RECORD = "mlflow.json"  # in a run folder: which MLflow run it is


def is_number(v) -> bool:
    """A finite int or float (not a bool): what MLflow can log as a metric."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"vae": {"samplers": {"gmm": {"inception_score": 9.1}}}} -> {"vae.samplers.gmm.inception_score": 9.1}."""
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """Every numeric key of metrics.json, flattened with dots; the per-epoch history is logged by step instead."""
    return {k: v for k, v in flatten({k: v for k, v in metrics.items() if k != "history"}).items() if is_number(v)}


def epoch_metrics(history: dict) -> list[tuple[str, float, int]]:
    """(`vae.test_loss`, value, epoch), ... for both models' per-epoch records."""
    return [
        (f"{kind}.{k}", v, record["epoch"])
        for kind, records in history.items()
        for record in records
        for k, v in record.items()
        if k != "epoch" and is_number(v)
    ]


def git_commit() -> str | None:
    """The commit of the code this process runs (a worker's clone, or the checkout), if it is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def read_record(run_dir: Path) -> dict | None:
    try:
        found = json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "run_id" in found else None


def write_record(run_dir: Path, record: dict) -> None:
    write_json(Path(run_dir) / RECORD, record)
