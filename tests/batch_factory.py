"""Batches of labelled PNGs built from real images, as a user would drop them into incoming/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF


def write_batch(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """`<folder>/<label>/<i>.png` for uint8 images [N, 28, 28]."""
    for i, (img, label) in enumerate(zip(images, labels.tolist())):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.numpy().astype(np.uint8), mode="L").save(folder / str(label) / f"img{i:05d}.png")
    return folder


def new_handwriting(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each image rotated by 2 to 10 degrees either way and shifted by up to 2 pixels: new writing of the same digits."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for img in images:
        angle = (2 + 8 * torch.rand(1, generator=g).item()) * (1 if torch.rand(1, generator=g).item() < 0.5 else -1)
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        out.append(
            TF.affine(
                img.unsqueeze(0),
                angle=angle,
                translate=[dx, dy],
                scale=1.0,
                shear=[0.0],
                interpolation=TF.InterpolationMode.BILINEAR,
            ).squeeze(0)
        )
    return torch.stack(out)


def pick(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0, start: int = 50_000):
    """n images from the end of the training split (rarely in tiny runs), chosen by the seed."""
    idx = start + torch.randperm(len(images) - start, generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


def accepted_batch(folder: Path, mnist) -> Path:
    """200 MNIST training images (beyond the first 50,000) in new handwriting, with their labels: a batch every
    intake check accepts."""
    images, labels = pick(mnist.train_images, mnist.train_labels, 200, seed=1)
    return write_batch(folder, new_handwriting(images, seed=1), labels)


def main() -> None:
    """`python tests/batch_factory.py OUT [--n 200] [--kind good|wrong-labels|inverted|fashion]`: a demo batch."""
    import argparse
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset, stage_source

    p = argparse.ArgumentParser(description="Write a batch of labelled PNGs built from real images.")
    p.add_argument("out", type=Path, help="the batch folder to create (<class>/<i>.png inside)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--kind", choices=["good", "wrong-labels", "inverted", "fashion"], default="good")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("DIGITGEN_DATA_ROOT", "data")))
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    default_source = os.environ.get("DIGITGEN_DATA_SOURCE") or (str(shared) if shared.is_dir() else None)
    p.add_argument("--data-source", type=Path, default=default_source, help="offline .gz files (as for digitgen)")
    a = p.parse_args()
    spec = get_dataset("fashion-mnist" if a.kind == "fashion" else "mnist")
    if a.data_source:
        stage_source(a.data_source, a.data_root, spec)
    data = load_dataset(a.data_root, spec, download=True)
    images, labels = pick(data.train_images, data.train_labels, a.n, seed=a.seed)
    if a.kind != "fashion":
        images = new_handwriting(images, seed=a.seed)
    if a.kind == "wrong-labels":
        labels = (labels + 3) % 10
    if a.kind == "inverted":
        images = 255 - images
    print(write_batch(a.out, images, labels))


if __name__ == "__main__":
    main()
