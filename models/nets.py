"""The two models: a VAE (Kingma & Welling, 2013) and a plain autoencoder of the same shape.

Images are [B, 1, 28, 28] in [0, 1]; decoders return Bernoulli logits of the same shape. Two bodies:
`mlp` (the MLP of pytorch/examples, widths from `hidden`) and `conv` (two stride-2 convolutions each way).
Optionally a `PixelHead` on top of the decoder lets each pixel also depend on the pixels above and to its
left (one masked convolution, as in PixelCNN / PixelVAE), which models stroke edges the latent code cannot.
The VAE's prior is N(0, I), or optionally a `MixturePrior` learned with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.losses import LOG_2PI, ae_loss, bce_nats, bernoulli_nats, kl_nats, log_normal

IMAGE_SHAPE = (1, 28, 28)
N_PIXELS = 28 * 28
BODIES = ("mlp", "conv")
PRIORS = ("normal", "mixture")


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
            nn.Conv2d(1, 32, 4, 2, 1),
            nn.ReLU(inplace=True),  # [B, 32, 14, 14]
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(inplace=True),  # [B, 64, 7, 7]
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, hidden[-1]),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(nn.Flatten(), mlp([N_PIXELS, *hidden]), nn.ReLU(inplace=True))


def decoder(body: str, latent_dim: int, hidden: tuple[int, ...], channels: int = 1) -> nn.Sequential:
    """z [B, latent_dim] -> [B, channels, 28, 28] (logits when channels is 1); the last module is the output layer.

    `channels` > 1 (features for a pixel head) exists for the conv body only."""
    if body == "conv":
        return nn.Sequential(
            nn.Linear(latent_dim, hidden[-1]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[-1], 64 * 7 * 7),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(inplace=True),  # [B, 32, 14, 14]
            nn.ConvTranspose2d(32, channels, 4, 2, 1),  # [B, channels, 28, 28]
        )
    return nn.Sequential(*mlp([latent_dim, *reversed(hidden), N_PIXELS]), nn.Unflatten(1, IMAGE_SHAPE))


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


class _Autoencoder(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        hidden: tuple[int, ...],
        body: str,
        code_size: int,
        pixel_head: bool,
        pixel_kernel: int = 3,
    ):
        super().__init__()
        if body not in BODIES:
            raise ValueError(f"unknown body {body!r}; expected one of {BODIES}")
        if pixel_head and body != "conv":
            raise ValueError("a pixel head needs the conv body (its features come from the conv decoder)")
        self.latent_dim, self.hidden, self.body = latent_dim, tuple(hidden), body
        self.encoder = encoder(body, self.hidden)
        self.to_code = nn.Linear(self.hidden[-1], code_size)
        self.head = PixelHead(kernel=pixel_kernel) if pixel_head else None
        self.decoder = decoder(body, latent_dim, self.hidden, self.head.channels if self.head else 1)
        if body == "conv":  # channels-last weights: oneDNN's fast convolutions on the CPU (about 2x), fine on CUDA
            self.to(memory_format=torch.channels_last)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli logits [B, 1, 28, 28] of p(x|z).

        With a pixel head the logits of a pixel depend on the pixels before it: pass the images `x` whose
        likelihood is wanted; without `x` a fresh image is drawn and the logits along that draw are returned.
        """
        out = self.decoder(z)
        if self.head is None:
            return out
        return self.head(out, x) if x is not None else self.head.sample(out)[1]

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats, [S, B], for S codes of each of the B images: z [S, B, D], x [B, 1, 28, 28].

        May run under autocast; the logits are taken to float32 before the (float32) Bernoulli log-likelihood.
        """
        s, b = z.shape[:2]
        out = self.decoder(z.flatten(0, 1))
        logits = out.reshape(s, b, -1).float() if self.head is None else self.head.logits_many(out, x)
        return -bernoulli_nats(logits, x.flatten(1).float()).sum(-1)

    def arch(self) -> dict:
        return {
            "kind": self.kind,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "body": self.body,
            "pixel_head": self.head is not None,
            "pixel_kernel": self.head.kernel if self.head else 3,
        }

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` codes [n, D] from N(0, I), on the CPU (the VAE overrides this with its own prior)."""
        return torch.randn(n, self.latent_dim, generator=generator)


class VAE(_Autoencoder):
    """x -> (mu, logvar) -> z = mu + sigma * eps -> logits of p(x|z); the prior p(z) is N(0, I) or a learned mixture."""

    kind = "vae"
    has_prior = True  # trained with a KL term towards its prior: beta and its warm-up apply

    def __init__(
        self,
        latent_dim: int = 16,
        hidden: tuple[int, ...] = (512,),
        body: str = "mlp",
        pixel_head: bool = False,
        pixel_kernel: int = 3,
        prior: str = "normal",
        prior_components: int = 100,
    ):
        # The encoder ends in 2 * latent_dim units: the mean and log-variance of q(z|x).
        super().__init__(latent_dim, hidden, body, 2 * latent_dim, pixel_head, pixel_kernel)
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; expected one of {PRIORS}")
        self.prior = MixturePrior(latent_dim, prior_components) if prior == "mixture" else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the posterior's mean and log-variance, each [B, latent_dim]."""
        mu, logvar = self.to_code(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): a sample that gradients flow through."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor):
        """(logits of p(x|z), mu, logvar, z) for one draw z of q(z|x)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, x), mu, logvar, z

    def arch(self) -> dict:
        if self.prior is None:
            return {**super().arch(), "prior": "normal"}
        return {**super().arch(), "prior": "mixture", "prior_components": self.prior.components}

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in float32 for codes z [..., D]: [...]."""
        if self.prior is None:
            return -0.5 * (LOG_2PI + z.float().pow(2)).sum(-1)
        return self.prior.log_prob(z)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` codes [n, D] from the prior, on the CPU."""
        return super().sample_prior(n, generator) if self.prior is None else self.prior.sample(n, generator)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per image, [B]: in closed form for N(0, I); for a learned prior, the one-sample
        estimate log q(z|x) - log p(z) at the code z drawn from q(z|x) (unbiased, as in the ELBO's usual estimator)."""
        if self.prior is None:
            return kl_nats(mu, logvar)
        return log_normal(z, mu, logvar) - self.prior.log_prob(z)

    def code(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """The posterior mean of each image, [B, latent_dim]; with `sample`, one draw from q(z|x) instead."""
        mu, logvar = self.encode(x)
        return self.reparameterize(mu, logvar) if sample else mu

    def loss_terms(self, out, x: torch.Tensor, beta: float) -> torch.Tensor:
        """[BCE + beta * KL, BCE, KL] batch means in float32, from `forward`'s output."""
        logits, mu, logvar, z = (t.float() for t in out)
        recon, kl = bce_nats(logits, x).mean(), self.kl(mu, logvar, z).mean()
        return torch.stack([recon + beta * kl, recon, kl])


class AE(_Autoencoder):
    """x -> z -> logits: the same encoder/decoder shape, no noise and no prior."""

    kind = "ae"
    has_prior = False

    def __init__(
        self,
        latent_dim: int = 16,
        hidden: tuple[int, ...] = (512,),
        body: str = "mlp",
        pixel_head: bool = False,
        pixel_kernel: int = 3,
    ):
        super().__init__(latent_dim, hidden, body, latent_dim, pixel_head, pixel_kernel)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code z, [B, latent_dim]."""
        return self.to_code(self.encoder(x))

    def forward(self, x: torch.Tensor):
        return self.decode(self.encode(x), x)

    def code(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """z of each image, [B, latent_dim] (deterministic: `sample` changes nothing)."""
        return self.encode(x)

    @staticmethod
    def loss_terms(out, x: torch.Tensor, beta: float) -> torch.Tensor:
        """[BCE, BCE, 0] batch means in float32, from `forward`'s output: the reconstruction term alone."""
        recon = ae_loss(out.float(), x)
        return torch.stack([recon, recon, torch.zeros_like(recon)])


MODELS = {"vae": VAE, "ae": AE}


def init_output_bias(model: nn.Module, pixel_mean: torch.Tensor) -> None:
    """Start the output bias at the logit of the mean pixel: the untrained decoder draws the mean digit."""
    if model.head is not None:  # the head's single output channel; the decoder's features stay centred
        out, p = model.head.out, pixel_mean.mean().reshape(1)
    else:
        out = next(m for m in reversed(model.decoder) if isinstance(m, (nn.Linear, nn.ConvTranspose2d)))
        p = pixel_mean.flatten() if isinstance(out, nn.Linear) else pixel_mean.mean().reshape(1)
    p = p.clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        out.bias.copy_(torch.log(p) - torch.log1p(-p))


def build(arch: dict) -> nn.Module:
    """Build a fresh model from `model.arch()`."""
    cls = MODELS.get(arch.get("kind"))
    if cls is None:
        raise ValueError(f"unknown model kind {arch.get('kind')!r}; expected 'vae' or 'ae'")
    hidden = tuple(int(h) for h in arch["hidden"])
    extra = {}
    if cls is VAE and arch.get("prior", "normal") != "normal":  # checkpoints from before learned priors have N(0, I)
        extra = {"prior": arch["prior"], "prior_components": int(arch["prior_components"])}
    return cls(
        latent_dim=int(arch["latent_dim"]),
        hidden=hidden,
        body=arch.get("body", "mlp"),
        pixel_head=bool(arch.get("pixel_head", False)),
        pixel_kernel=int(arch.get("pixel_kernel", 3)),
        **extra,
    )
