"""Losses in nats per image. Pixels are Bernoulli; the prior is N(0, I) unless a model learns its own."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def bce_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image, [B]: binary cross-entropy summed over pixels."""
    return F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1), reduction="none").sum(1)


def kl_nats(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per image, [B].

    Appendix B of Kingma & Welling (2013): -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def ae_loss(logits, x) -> torch.Tensor:
    """Mean over the batch of the BCE reconstruction term."""
    return bce_nats(logits, x).mean()
