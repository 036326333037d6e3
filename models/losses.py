"""Losses in nats per image. Pixels are Bernoulli; the prior is N(0, I)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image, [B]: binary cross-entropy summed over pixels."""
    return F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1), reduction="none").sum(1)


def kl_nats(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per image, [B].

    Appendix B of Kingma & Welling (2013): -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def vae_loss(logits, x, mu, logvar, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the batch of (BCE + beta * KL, BCE, KL)."""
    recon, kl = bce_nats(logits, x).mean(), kl_nats(mu, logvar).mean()
    return recon + beta * kl, recon, kl


def ae_loss(logits, x) -> torch.Tensor:
    """Mean over the batch of the BCE reconstruction term."""
    return bce_nats(logits, x).mean()
