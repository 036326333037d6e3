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
