"""Latent-space geometry: codes, 2-D projections, manifold grids and interpolations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@torch.inference_mode()
def codes(model: nn.Module, images: torch.Tensor, batch_size: int = 2000, sample: bool = False) -> torch.Tensor:
    """Latent codes [N, D]: the posterior mean for the VAE, z for the AE. uint8 images are scaled batch by batch.

    `sample`: for the VAE, one draw from each q(z|x) instead of its mean: together they are draws from the
    aggregate posterior, which is what should match the prior N(0, I).
    """
    model.eval()
    out = []
    for x in images.split(batch_size):
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        out.append(model.code(x, sample=sample))
    return torch.cat(out)


@dataclass
class Projection:
    """z ~= mean + coords @ basis: the 2-D latent itself, or its two leading principal directions."""

    mean: torch.Tensor  # [D]
    basis: torch.Tensor  # [2, D], orthonormal rows
    method: str  # "latent" or "PCA"
    explained: float  # share of the codes' variance the two directions carry

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) @ self.basis.T  # [N, 2]

    def lift_from_origin(self, coords: torch.Tensor) -> torch.Tensor:
        """Points of the plane through the prior's centre (z = 0) along the same two directions, [N, D]."""
        return coords @ self.basis


def projection(z: torch.Tensor) -> Projection:
    """Identity for a 2-D latent; otherwise PCA onto the two directions of largest variance."""
    z = z.float()
    if z.shape[1] == 2:
        return Projection(torch.zeros(2), torch.eye(2), "latent", 1.0)
    mean = z.mean(0)
    _, s, v = torch.linalg.svd(z - mean, full_matrices=False)
    explained = (s[:2].pow(2).sum() / s.pow(2).sum()).item()
    return Projection(mean, v[:2].clone(), "PCA", explained)


def grid_coords(n: int = 15) -> torch.Tensor:
    """[n*n, 2] grid points over N(0, 1)'s 5% to 95% quantiles on each axis, row-major from the top-left."""
    xs = ys = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    gy, gx = torch.meshgrid(ys.flip(0), xs, indexing="ij")  # y grows upwards, as on the scatter
    return torch.stack([gx.flatten(), gy.flatten()], 1)


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Straight line from z0 to z1 in `steps` points, [steps, D]."""
    t = torch.linspace(0, 1, steps, device=z0.device).unsqueeze(1)
    return (1 - t) * z0 + t * z1


@torch.inference_mode()
def decode_images(model: nn.Module, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Decode codes to pixel probabilities [N, 1, 28, 28], in batches.

    With a pixel head each image is drawn pixel by pixel and shows the probabilities along its draw.
    """
    model.eval()
    return torch.cat([torch.sigmoid(model.decode(chunk)) for chunk in z.split(batch_size)])
