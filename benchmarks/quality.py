"""Quality table: run each preset through the pipeline and set its test figures beside published anchors.

    python benchmarks/quality.py --write                   # quality and default presets, all 10,000 test images
    python benchmarks/quality.py --presets quality --epochs 50   # the headline NLL (VAE trained <= 20 minutes)
    python benchmarks/quality.py --presets quality --k 5000 --write
Writes benchmarks/quality.md. NLL figures are comparable with the literature only for dynamically binarized runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = [
    ("VAE, 1 stochastic layer (Burda et al. 2015, IWAE paper, Table 1)", "86.76"),
    ("IWAE, 2 stochastic layers, k=50 (IWAE paper, Table 1)", "82.90"),
    ("Convolutional VAE (MillionIntegrals/vel)", "81.02"),
]


def read_run(folder: Path, wall: float | None = None) -> dict:
    """A finished run folder's figures, as the table wants them."""
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"preset": config["preset"], "metrics": metrics, "config": config, "wall": wall}


def run_preset(preset: str, out: Path, extra: list[str]) -> dict:
    name = f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [
        str(Path(sys.executable).parent / "digitgen"),
        "run",
        "--preset",
        preset,
        "--out",
        str(out),
        "--run-name",
        name,
        "--no-progress",
        *extra,
    ]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return read_run(out / name, time.perf_counter() - t)


def _pair(v: dict, key: str, digits: int) -> str:
    """A sample score from prior draws, and from the fitted mixtures where the run has them."""
    gmm = v.get("samplers", {}).get("gmm")
    return f"{v[key]:.{digits}f}" + (f" / {gmm[key]:.{digits}f}" if gmm else "")


def row(r: dict) -> str:
    m, c, v = r["metrics"], r["config"], r["metrics"]["vae"]
    train = m["train_seconds"]["vae"] / 60
    data = "binarized" if c["binarize"] == "dynamic" else "grey levels"
    test = f", {m['n_test']:,} test images" if m["n_test"] < 10_000 else ""
    arch = c["arch"] + (" + pixel head" if c.get("pixel_head") else "")
    arch += " + learned mixture prior" if c.get("prior", "normal") == "mixture" else ""
    return (
        f"| `{r['preset']}` ({arch}, {data}, {c['epochs']} epochs, batch {c['batch_size']}{test}) | {v['test_nll_is_nats']:.2f} ± "
        f"{v['test_nll_is_stderr']:.2f} (k={v['is_samples']}) | {v['test_neg_elbo_nats']:.2f} | "
        f"{_pair(v, 'inception_score', 2)} | {_pair(v, 'frechet_distance', 1)} | {v['knn_accuracy']:.3f} | "
        f"{v['active_units']}/{c['latent_dim']} | {train:.1f} min |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["quality", "default"])
    p.add_argument("--k", type=int, help="importance samples for the NLL (default: the preset's)")
    p.add_argument(
        "--epochs",
        type=int,
        help="override the epochs of presets other than default (50: the headline run, 20 minutes of VAE training at most)",
    )
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test images only (quicker NLL)")
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "quality")
    p.add_argument(
        "--from-runs",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="build the table from finished run folders instead of running the presets",
    )
    p.add_argument("--write", action="store_true", help="write benchmarks/quality.md")
    args = p.parse_args()
    extra = (["--is-samples", str(args.k)] if args.k else []) + (
        ["--test-limit", str(args.test_limit)] if args.test_limit else []
    )
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    if args.from_runs:
        results = [read_run(folder) for folder in args.from_runs]
    else:
        results = [run_preset(p_, args.out, extra + (epochs if p_ != "default" else [])) for p_ in args.presets]
    header = [
        "| run | test NLL (nats) | test -ELBO (nats) | Inception score (prior / fitted mixtures) | Fréchet distance (same) | 5-NN probe | active units | VAE training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = header + [row(r) for r in results] + [f"| {name} | {nll} | | | | | | |" for name, nll in ANCHORS]
    table = "\n".join(lines)
    print(table)
    if args.write:
        test_is = results[0]["metrics"]["test_digits"]["inception_score"]
        body = (
            f"# Model quality\n\nProduced by `python benchmarks/quality.py {' '.join(sys.argv[1:])}` on "
            f"{time.strftime('%Y-%m-%d')}. Real test digits have an Inception score of {test_is:.2f} under the "
            f"same classifier. Anchor NLLs are on dynamically binarized MNIST.\n\n{table}\n"
        )
        (ROOT / "benchmarks" / "quality.md").write_text(body)


if __name__ == "__main__":
    main()
