"""Peak memory of `digitgen ingest` on a large batch (issue 26.7: 20,000 images under 1 GiB RSS).

    python benchmarks/bench_ingest.py            # 20,000 images
    python benchmarks/bench_ingest.py --n 5000

A data root is staged from DIGITGEN_DATA_SOURCE (or ../shared/data) into a temporary folder, a batch of --n new
handwritten MNIST digits (rotated and shifted training images, tests/batch_factory.py) is written as PNGs, and the
ingest runs against a Prefect server started once. A first ingest of 100 images trains the judge classifier, which
is then cached, so the measured ingest is the one a team's nightly inbox sees. Prints the wall time and the peak
RSS of the ingest process (its high-water mark, as the kernel reports it when the process is reaped), and whether the
batch became a version.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.bench_runs import prefect_server, timed_child  # noqa: E402


def write_batch_of(n: int, folder: Path, data_root: Path, seed: int) -> Path:
    from batch_factory import new_handwriting, pick, write_batch

    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset

    mnist = load_dataset(data_root, get_dataset("mnist"), download=True)  # extracts the staged archives; no network
    images, labels = pick(mnist.train_images, mnist.train_labels, n, seed=seed, start=60_000 - max(n, 10_000))
    return write_batch(folder, new_handwriting(images, seed=seed), labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="images in the measured batch")
    p.add_argument("--write", action="store_true", help="put the figures in benchmarks/results.md (its last section)")
    ns = p.parse_args()
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import stage_source

    source = Path(os.environ.get("DIGITGEN_DATA_SOURCE") or ROOT.parent / "shared" / "data")
    digitgen = str(Path(sys.executable).parent / "digitgen")
    with tempfile.TemporaryDirectory() as tmp, prefect_server() as api_url:
        root = Path(tmp) / "data"
        stage_source(source, root, get_dataset("mnist"))
        env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "DIGITGEN_DATA_ROOT": str(root),
        }
        warm = write_batch_of(100, Path(tmp) / "warm-up", root, seed=1)
        timed_child([digitgen, "ingest", str(warm), "--no-progress"], env)  # trains and caches the judge
        small = write_batch_of(1_000, Path(tmp) / "batch-1000", root, seed=3)
        small_wall, small_peak = timed_child([digitgen, "ingest", str(small), "--no-progress"], env)
        batch = write_batch_of(ns.n, Path(tmp) / f"batch-{ns.n}", root, seed=2)
        wall, peak = timed_child([digitgen, "ingest", str(batch), "--no-progress"], env)
        versions = sorted((root / "mnist" / "versions").glob("v*.json"))
    lines = [
        f"- 1,000 images: peak RSS **{small_peak:.2f} GiB**, {small_wall:.1f} s: mostly the process's floor (importing "
        "the CUDA build of torch takes about 0.5 GiB, its CUDA libraries' static data most of it; then Prefect, "
        "Great Expectations with SciPy, pandas, matplotlib, and the dataset's 70,000 images, read once).",
        f"- {ns.n:,} images: peak RSS **{peak:.2f} GiB** (target < 1 GiB), {wall:.1f} s; {len(versions)} versions after "
        "both (base, warm-up, 1,000, this batch).",
    ]
    print("\n".join(lines))
    if ns.write:
        from benchmarks.bench_cli import replace_section
        from benchmarks.bench_train import INGEST_HEADING
        from models.train import cpu_name

        section = (
            f"{INGEST_HEADING}\n\nProduced by `python benchmarks/bench_ingest.py --write` on "
            f"{time.strftime('%Y-%m-%d')} on a {os.cpu_count()}-core {cpu_name()}: `digitgen ingest` against a running Prefect server, "
            "the judge classifier already trained; peak RSS of the ingest process (its high-water mark, from `wait4`).\n\n"
            + "\n".join(lines)
            + "\n"
        )
        replace_section(ROOT / "benchmarks" / "results.md", INGEST_HEADING, section)  # the sections after it stay


if __name__ == "__main__":
    main()
