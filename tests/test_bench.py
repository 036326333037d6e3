"""The benchmark's Prefect-free pipeline must stay the same sequence of stages as the flow, and its reference must
find the data (nothing is timed here)."""

import json
from pathlib import Path

from benchmarks.bench_runs import plain_pipeline
from benchmarks.setting import torchvision_root


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


def test_the_reference_reads_the_data_root_as_torchvision_lays_it_out(data_root):
    """pytorch/examples' loop opens MNIST with torchvision (`<root>/MNIST/raw`); our data root keeps it in
    `mnist/raw` (`make bench` failed with "Dataset not found" when it was given the data root itself)."""
    from torchvision import datasets

    with torchvision_root(data_root) as root:
        test = datasets.MNIST(root, train=False)
        assert len(test) == 10_000 and len(datasets.MNIST(root, train=True)) == 60_000
