"""The two models: a VAE (Kingma & Welling, 2013) and a plain autoencoder of the same shape.

Images are [B, 1, 28, 28] in [0, 1]; decoders return Bernoulli logits of the same shape.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
N_PIXELS = 28 * 28


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """x -> (mu, logvar) -> z = mu + sigma * eps -> logits of p(x|z)."""

    kind = "vae"

    def __init__(self, latent_dim: int = 16, hidden: tuple[int, ...] = (512,)):
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, tuple(hidden)
        # Encoder ends in 2 * latent_dim units: the mean and log-variance of q(z|x).
        self.encoder = nn.Sequential(mlp([N_PIXELS, *hidden]), nn.ReLU(inplace=True))
        self.to_stats = nn.Linear(hidden[-1], 2 * latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden), N_PIXELS])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the posterior's mean and log-variance, each [B, latent_dim]."""
        mu, logvar = self.to_stats(self.encoder(x.flatten(1))).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): a sample that gradients flow through."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return Bernoulli logits [B, 1, 28, 28] of p(x|z)."""
        return self.decoder(z).view(-1, *IMAGE_SHAPE)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def arch(self) -> dict:
        return {"kind": self.kind, "latent_dim": self.latent_dim, "hidden": list(self.hidden)}


class AE(nn.Module):
    """x -> z -> logits: the same encoder/decoder shape, no noise and no prior."""

    kind = "ae"

    def __init__(self, latent_dim: int = 16, hidden: tuple[int, ...] = (512,)):
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, tuple(hidden)
        self.encoder = nn.Sequential(mlp([N_PIXELS, *hidden]), nn.ReLU(inplace=True))
        self.to_code = nn.Linear(hidden[-1], latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden), N_PIXELS])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code z, [B, latent_dim]."""
        return self.to_code(self.encoder(x.flatten(1)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return Bernoulli logits [B, 1, 28, 28]."""
        return self.decoder(z).view(-1, *IMAGE_SHAPE)

    def forward(self, x: torch.Tensor):
        return self.decode(self.encode(x))

    def arch(self) -> dict:
        return {"kind": self.kind, "latent_dim": self.latent_dim, "hidden": list(self.hidden)}


def init_output_bias(decoder: nn.Sequential, pixel_mean: torch.Tensor) -> None:
    """Start the last layer's bias at the logit of each pixel's mean: the untrained decoder outputs the mean digit."""
    p = pixel_mean.flatten().clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        decoder[-1].bias.copy_(torch.log(p) - torch.log1p(-p))


def build(arch: dict) -> nn.Module:
    """Build a fresh model from `model.arch()`."""
    cls = {"vae": VAE, "ae": AE}.get(arch.get("kind"))
    if cls is None:
        raise ValueError(f"unknown model kind {arch.get('kind')!r}; expected 'vae' or 'ae'")
    return cls(latent_dim=int(arch["latent_dim"]), hidden=tuple(int(h) for h in arch["hidden"]))
