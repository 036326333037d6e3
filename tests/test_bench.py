"""The benchmark's Prefect-free pipeline must stay the same sequence of stages as the flow (it is not timed here)."""

import json
from pathlib import Path

from benchmarks.bench_runs import plain_pipeline


def test_plain_pipeline_matches_the_flow(tmp_path, data_root):
    report = plain_pipeline(
        str(tmp_path),
        epochs=1,
        train_limit=1000,
        test_limit=500,
        is_samples=5,
        quality_samples=500,
        data_root=data_root,
        device="cpu",
    )
    folder = Path(report).parent
    assert (folder / "report.md").is_file()
    assert json.loads((folder / "metrics.json").read_text())["n_train"] == 1000
