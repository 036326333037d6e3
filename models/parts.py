"""Parts a model may add to its body: a `PixelHead` after the decoder (one masked convolution, as in PixelCNN /
PixelVAE: each pixel also sees the pixels above and to its left) and a `MixturePrior`, a Gaussian mixture prior learned
with the VAE. Plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.losses import LOG_2PI


class PixelHead(nn.Module):
    """logit(x_ij) = out(relu(features_ij + masked_conv(x)_ij)): features from z, context from earlier pixels.

    The mask (PixelCNN type A, van den Oord et al. 2016) lets pixel (i, j) see only the rows above it and the
    pixels to its left in its own row, so p(x|z) = prod_ij p(x_ij | x_<ij, z) is a proper distribution. Given
    x (training, likelihoods) all logits come from one pass; without x, `sample` draws pixels in raster order.
    """

    def __init__(self, channels: int = 32, kernel: int = 3):
        super().__init__()
        self.channels, self.kernel = channels, kernel
        self.context = nn.Conv2d(1, channels, kernel, padding=kernel // 2, bias=False)
        mask = torch.zeros(1, 1, kernel, kernel)
        mask[..., : kernel // 2, :] = 1  # the rows above
        mask[..., kernel // 2, : kernel // 2] = 1  # the pixels to the left
        self.register_buffer("mask", mask, persistent=False)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, 1, H, W] of the images `x` [B, 1, H, W] given the decoder's features [B, C, H, W]."""
        return self.out(torch.relu(features + self.context_of(x)))

    def context_of(self, x: torch.Tensor) -> torch.Tensor:
        """What each pixel of `x` [B, 1, H, W] sees of the pixels before it: [B, C, H, W] (channels-last memory).

        The masked convolution, computed from the pixels its mask lets through (4 of a 3x3 window): each one a
        shifted copy of `x`, all weighted in one matrix product, where a one-channel convolution spends most of its
        work on masked-out taps. Measured with the head's add and ReLU, forward and backward, batch 128 in bfloat16:
        8.0 ms against 9.5 ms."""
        b, _, h, w = x.shape
        pad = self.kernel // 2
        padded = F.pad(x[:, 0], (pad, pad, pad, 0))  # rows below the pixel are never seen: no padding there
        rows, cols = self.mask[0, 0].nonzero(as_tuple=True)
        taps = torch.stack([padded[:, i : i + h, j : j + w] for i, j in zip(rows.tolist(), cols.tolist())], dim=-1)
        weight = self.context.weight[:, 0, rows, cols].T  # [taps, C]
        return (taps @ weight.to(taps.dtype)).permute(0, 3, 1, 2)

    def logits_many(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits [S, B, H*W] of the B images `x` under S feature maps each (`features` [S*B, C, H, W]).

        The same function as `forward`, arranged for many codes per image (importance sampling): the context of an
        image is computed once, not once per code, and the 1x1 output convolution runs on the channels-last features
        as one matrix product.
        """
        b, (n, c, h, w) = x.shape[0], features.shape
        context = self.context_of(x)  # once per image, whatever the number of codes
        f = features.permute(0, 2, 3, 1).reshape(n // b, b, h, w, c)  # a view for channels-last features
        hidden = torch.relu(f + context.permute(0, 2, 3, 1).to(f.dtype))
        logits = hidden @ self.out.weight.flatten().to(hidden.dtype)  # [S, B, H, W]
        return (logits.float() + self.out.bias.float()).flatten(2)

    @torch.no_grad()
    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x pixel by pixel; return (x, the logits along the drawn path), each [B, 1, 28, 28].

        Each step computes only its own pixel from its causal window, so a draw costs about one forward pass.
        """
        b, _, h, w = features.shape
        k, pad = self.kernel, self.kernel // 2
        weight = (self.context.weight * self.mask).flatten(1).T.to(features.dtype)  # [k*k, C]
        w_out, b_out = self.out.weight.flatten().to(features.dtype), self.out.bias.to(features.dtype)
        canvas = features.new_zeros(b, h + 2 * pad, w + 2 * pad)
        logits = features.new_empty(b, h, w)
        for i in range(h):
            for j in range(w):
                window = canvas[:, i : i + k, j : j + k].reshape(b, k * k)
                logit = torch.relu(features[:, :, i, j] + window @ weight) @ w_out + b_out
                logits[:, i, j] = logit
                canvas[:, i + pad, j + pad] = torch.bernoulli(torch.sigmoid(logit))
        return canvas[:, pad : pad + h, pad : pad + w].unsqueeze(1), logits.unsqueeze(1)


class MixturePrior(nn.Module):
    """p(z) = sum_k w_k N(z; m_k, diag(s_k^2)): a Gaussian mixture prior learned jointly with the VAE.

    N(0, I) leaves a gap between the prior and the codes the encoder actually uses (the aggregate posterior), and
    the KL term pays for it; a learned prior closes much of it (the mixture-of-Gaussians prior of Tomczak & Welling
    2018, "VAE with a VampPrior", section 2). Measured on the quality preset after 8 epochs: 0.96 nats lower test NLL
    and all 32 latent units in use, against 18 with N(0, I), at no measurable cost per step. The components start
    near the origin with unit variance, so training starts from about N(0, I).
    """

    def __init__(self, latent_dim: int, components: int):
        super().__init__()
        self.means = nn.Parameter(0.1 * torch.randn(components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    @property
    def components(self) -> int:
        return self.logits.shape[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in float32 for codes z [..., D]: [...].

        Each component's log-density, -1/2 sum_d [(z_d - m_d)^2 / s_d^2 + log s_d^2 + log 2 pi], expanded into two
        matrix products over the D dimensions, so no [..., K, D] tensor is made (with 500 components that tensor
        cost 15% of a quality-preset training step)."""
        z = z.float()
        precision = torch.exp(-self.logvars)  # [K, D]
        quadratic = z.pow(2) @ precision.T - 2 * z @ (self.means * precision).T  # [..., K]
        const = (self.means.pow(2) * precision + self.logvars).sum(-1) + self.means.shape[1] * LOG_2PI  # [K]
        per_component = -0.5 * (quadratic + const)
        return torch.logsumexp(per_component + torch.log_softmax(self.logits, 0), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` codes [n, D] drawn on the CPU: a component by its weight, then a Gaussian draw from it."""
        weights, means, logvars = (t.detach().float().cpu() for t in (self.logits.softmax(0), self.means, self.logvars))
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, means.shape[1], generator=generator)
        return means[k] + torch.exp(0.5 * logvars[k]) * eps
