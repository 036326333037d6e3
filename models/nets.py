"""The two models: a VAE (Kingma & Welling, 2013) and a plain autoencoder of the same shape.

Images are [B, 1, 28, 28] in [0, 1]; decoders return Bernoulli logits of the same shape. Two bodies:
`mlp` (the MLP of pytorch/examples, widths from `hidden`) and `conv` (two stride-2 convolutions each way).
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
N_PIXELS = 28 * 28
BODIES = ("mlp", "conv")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def encoder(body: str, hidden: tuple[int, ...]) -> nn.Sequential:
    """[B, 1, 28, 28] -> features [B, hidden[-1]]."""
    if body == "conv":
        return nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(inplace=True),  # [B, 32, 14, 14]
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(inplace=True),  # [B, 64, 7, 7]
            nn.Flatten(), nn.Linear(64 * 7 * 7, hidden[-1]), nn.ReLU(inplace=True),
        )  # fmt: skip
    return nn.Sequential(nn.Flatten(), mlp([N_PIXELS, *hidden]), nn.ReLU(inplace=True))


def decoder(body: str, latent_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """z [B, latent_dim] -> logits [B, 1, 28, 28]; the last module is the output layer."""
    if body == "conv":
        return nn.Sequential(
            nn.Linear(latent_dim, hidden[-1]), nn.ReLU(inplace=True),
            nn.Linear(hidden[-1], 64 * 7 * 7), nn.ReLU(inplace=True), nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(inplace=True),  # [B, 32, 14, 14]
            nn.ConvTranspose2d(32, 1, 4, 2, 1),  # [B, 1, 28, 28]
        )  # fmt: skip
    return nn.Sequential(*mlp([latent_dim, *reversed(hidden), N_PIXELS]), nn.Unflatten(1, IMAGE_SHAPE))


class _Autoencoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: tuple[int, ...], body: str, code_size: int):
        super().__init__()
        if body not in BODIES:
            raise ValueError(f"unknown body {body!r}; expected one of {BODIES}")
        self.latent_dim, self.hidden, self.body = latent_dim, tuple(hidden), body
        self.encoder = encoder(body, self.hidden)
        self.to_code = nn.Linear(self.hidden[-1], code_size)
        self.decoder = decoder(body, latent_dim, self.hidden)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return Bernoulli logits [B, 1, 28, 28] of p(x|z)."""
        return self.decoder(z)

    def arch(self) -> dict:
        return {"kind": self.kind, "latent_dim": self.latent_dim, "hidden": list(self.hidden), "body": self.body}


class VAE(_Autoencoder):
    """x -> (mu, logvar) -> z = mu + sigma * eps -> logits of p(x|z)."""

    kind = "vae"

    def __init__(self, latent_dim: int = 16, hidden: tuple[int, ...] = (512,), body: str = "mlp"):
        # The encoder ends in 2 * latent_dim units: the mean and log-variance of q(z|x).
        super().__init__(latent_dim, hidden, body, 2 * latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the posterior's mean and log-variance, each [B, latent_dim]."""
        mu, logvar = self.to_code(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): a sample that gradients flow through."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


class AE(_Autoencoder):
    """x -> z -> logits: the same encoder/decoder shape, no noise and no prior."""

    kind = "ae"

    def __init__(self, latent_dim: int = 16, hidden: tuple[int, ...] = (512,), body: str = "mlp"):
        super().__init__(latent_dim, hidden, body, latent_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code z, [B, latent_dim]."""
        return self.to_code(self.encoder(x))

    def forward(self, x: torch.Tensor):
        return self.decode(self.encode(x))


def init_output_bias(decoder: nn.Sequential, pixel_mean: torch.Tensor) -> None:
    """Start the output bias at the logit of the mean pixel: the untrained decoder draws the mean digit."""
    out = next(m for m in reversed(decoder) if isinstance(m, (nn.Linear, nn.ConvTranspose2d)))
    p = (pixel_mean.flatten() if isinstance(out, nn.Linear) else pixel_mean.mean().reshape(1)).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        out.bias.copy_(torch.log(p) - torch.log1p(-p))


def build(arch: dict) -> nn.Module:
    """Build a fresh model from `model.arch()`."""
    cls = {"vae": VAE, "ae": AE}.get(arch.get("kind"))
    if cls is None:
        raise ValueError(f"unknown model kind {arch.get('kind')!r}; expected 'vae' or 'ae'")
    hidden = tuple(int(h) for h in arch["hidden"])
    return cls(latent_dim=int(arch["latent_dim"]), hidden=hidden, body=arch.get("body", "mlp"))
