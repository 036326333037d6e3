"""Full runs with the default settings on all the data: minutes each, so `make test-full` only (marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# pytorch/examples' VAE after its 10 epochs (grey levels, nats per test image): the bar each default run must beat.
ANCHORS = {"mnist": 105.56, "fashion-mnist": 244.41}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_default_run_beats_pytorch_examples(tmp_path, sources_root, dataset):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitgen.cli",
            "run",
            "--dataset",
            dataset,
            "--data-root",
            str(tmp_path / "data"),
            "--data-source",
            str(sources_root),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((Path(done.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert metrics["dataset"] == dataset and metrics["n_train"] == 60_000 and metrics["n_test"] == 10_000
    assert metrics["vae"]["test_neg_elbo_nats"] < ANCHORS[dataset]
