"""The two models: a VAE (Kingma & Welling, 2013) and a plain autoencoder of the same shape.

Images are [B, 1, 28, 28] in [0, 1]; decoders return Bernoulli logits of the same shape. Two bodies:
`mlp` (the MLP of pytorch/examples, widths from `hidden`) and `conv` (two stride-2 convolutions each way).
Optionally a `PixelHead` on top of the decoder lets each pixel also depend on the pixels above and to its
left (one masked convolution, as in PixelCNN / PixelVAE), which models stroke edges the latent code cannot.
The VAE's prior is N(0, I), or optionally a `MixturePrior` learned with the model.
"""

from __future__ import annotations

import torch
from torch import nn

from models.losses import LOG_2PI, ae_loss, bce_nats, bernoulli_nats, kl_nats, log_normal
from models.parts import MixturePrior, PixelHead

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
