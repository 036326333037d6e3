"""Generation table: how a run's samplers look to the project's classifier and to an independent one.

    python benchmarks/generation.py --write                     # a default run first, then the table
    python benchmarks/generation.py --run artifacts/<run> --write

The independent classifier shares nothing with the project's judge: an MLP (784-512-256-10, dropout) trained here on
the official training images with another seed and no augmentation. Writes benchmarks/generation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitgen.config import PipelineConfig  # noqa: E402
from digitgen.data.datasets import get_dataset  # noqa: E402
from digitgen.data.loading import dataset_fingerprint, load_dataset, to_float  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.classifier import predict  # noqa: E402
from models.latent import decode_images  # noqa: E402
from models.quality import class_histogram, frechet_distance, inception_score  # noqa: E402
from models.samplers import SAMPLERS, draw_codes, load_mixtures  # noqa: E402
from tasks.classifier import classifier_path, load_classifier  # noqa: E402

N_SAMPLES = 10_000
PER_CLASS = 500


class MLPClassifier(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 256), nn.ReLU()
        )
        self.head = nn.Linear(256, n_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def independent_classifier(images, labels, n_classes: int, epochs: int = 6, seed: int = 1) -> MLPClassifier:
    torch.manual_seed(seed)
    model = MLPClassifier(n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(images), generator=g).split(128):
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def default_run() -> Path:
    name = f"generation-{time.strftime('%Y%m%d-%H%M%S')}"
    subprocess.run(
        [str(Path(sys.executable).parent / "digitgen"), "run", "--run-name", name, "--no-progress"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    return ROOT / "artifacts" / name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a finished run folder (default: make a default run first)")
    p.add_argument("--write", action="store_true", help="write benchmarks/generation.md")
    args = p.parse_args()
    run = args.run or default_run()
    config = PipelineConfig(**{**json.loads((run / "config.json").read_text()), "resume": None, "data_source": None})
    spec = get_dataset(config.dataset)
    data = load_dataset(config.data_root, spec)
    judge = load_classifier(classifier_path(config, dataset_fingerprint(config.data_root, spec)))
    train, test = to_float(data.train_images), to_float(data.test_images)
    t = time.perf_counter()
    other = independent_classifier(train, data.train_labels, spec.n_classes)
    judges = {"project": judge, "independent": other}
    accuracy = {
        k: (predict(m, test)[0].argmax(1) == data.test_labels).double().mean().item() for k, m in judges.items()
    }
    real = {k: predict(m, test) for k, m in judges.items()}
    print(
        f"independent classifier trained in {time.perf_counter() - t:.0f} s; test accuracy "
        f"{accuracy['independent']:.2%} (project: {accuracy['project']:.2%})",
        flush=True,
    )

    rows = [("real test images", {k: (inception_score(real[k][0]), 0.0, class_histogram(real[k][0])) for k in judges})]
    for kind in ("vae", "ae"):
        model, mixtures = load_checkpoint(run / f"{kind}.pt"), load_mixtures(run / "samplers.pt", kind)
        for name in SAMPLERS:
            z, _ = draw_codes(name, N_SAMPLES, model, torch.Generator().manual_seed(0), mixtures)
            images = decode_images(model, z)
            scores = {}
            for k, m in judges.items():
                probs, feats = predict(m, images)
                scores[k] = (inception_score(probs), frechet_distance(feats, real[k][1]), class_histogram(probs))
            rows.append((f"{kind.upper()} from {name}", scores))
            print(rows[-1][0], {k: f"IS {v[0]:.2f} FD {v[1]:.1f}" for k, v in scores.items()}, flush=True)

    vae, mixtures = load_checkpoint(run / "vae.pt"), load_mixtures(run / "samplers.pt", "vae")
    fidelity = {k: [] for k in judges}
    g = torch.Generator().manual_seed(0)
    for c in range(spec.n_classes):
        z, _ = draw_codes("gmm", PER_CLASS, vae, g, mixtures, cls=c)
        images = decode_images(vae, z)
        for k, m in judges.items():
            fidelity[k].append((predict(m, images)[0].argmax(1) == c).double().mean().item())
    print("fidelity", {k: [f"{f:.3f}" for f in v] for k, v in fidelity.items()}, flush=True)

    m = json.loads((run / "metrics.json").read_text())
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = [
        "# Generation: samplers judged by two classifiers",
        "",
        f"Run `{run.name}` ({spec.title}, {config.preset} preset: {config.arch}, latent {config.latent_dim}, "
        f"{config.epochs} epochs, {m['n_train']:,} training images; VAE test -ELBO {m['vae']['test_neg_elbo_nats']:.2f}"
        f"). Reproduce: `python benchmarks/generation.py --write` (a default run, then this table; "
        f"{platform.python_version()}, torch {torch.__version__}, {cpu}, {os.cpu_count()} cores).",
        "",
        f"Classifiers: the project's judge (conv, test accuracy {accuracy['project']:.2%}) and an independent MLP "
        f"(784-512-256, another seed, no augmentation; test accuracy {accuracy['independent']:.2%}). "
        f"{N_SAMPLES:,} samples per row; Fréchet distance in each classifier's own feature space, to the test images.",
        "",
        "| Codes drawn from | IS, project | IS, independent | FD, project | FD, independent | class shares, project "
        "| class shares, independent |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for label, s in rows:
        p_, i_ = s["project"], s["independent"]
        lines.append(
            f"| {label} | {p_[0]:.2f} | {i_[0]:.2f} | {p_[1]:.1f} | {i_[1]:.1f} | "
            f"{min(p_[2]):.1%}-{max(p_[2]):.1%} | {min(i_[2]):.1%}-{max(i_[2]):.1%} |"
        )
    lines += [
        "",
        f"A chosen class (`digitgen generate RUN --digit D`, the VAE's `gmm` sampler): share of {PER_CLASS} images "
        "per class that each classifier gives the asked-for class.",
        "",
        "| Classifier | " + " | ".join(spec.classes) + " | lowest |",
        "|---|" + "---:|" * (spec.n_classes + 1),
        *[f"| {k} | " + " | ".join(f"{f:.1%}" for f in v) + f" | {min(v):.1%} |" for k, v in fidelity.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        (ROOT / "benchmarks" / "generation.md").write_text(text)


if __name__ == "__main__":
    main()
