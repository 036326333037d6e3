"""Where a decoder's codes come from: the prior N(0, I), or a density fitted to the codes of the training images.

Sampling a VAE from N(0, I) defines it, but its aggregate posterior does not fill the prior, so many prior draws
decode to blends. Ex-post density estimation (Ghosh et al. 2020, "From Variational to Deterministic
Autoencoders") fits a Gaussian mixture to the codes of the training images and samples from that instead; the same
works for a plain AE, whose codes ignore N(0, I) altogether. Here the mixture is fitted per class (scikit-learn's
GaussianMixture), which also gives a chosen class on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from digitgen.errors import DigitgenError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads SAMPLERS for its help and answers at once
    import torch

SAMPLERS = {
    "prior": "the model's prior: N(0, I), or the VAE's learned mixture (--prior mixture)",
    "gmm": "a Gaussian mixture per class fitted to the training images' codes (ex-post density)",
}
COMPONENTS = 5  # mixture components per class: 3 and 5 measured; 5 gave the better Fréchet distance
# A chosen class is drawn a little nearer its modes (temperature < 1 scales the spread) and kept only where the
# mixtures themselves give it that class with this posterior: codes between two classes decode to blends.
CLASS_TEMPERATURE = 0.8
CLASS_CONFIDENCE = 0.999  # measured on a default run: 0.99 left the worst class (4) at 97%, 0.999 at 98.4%
ROUNDS = 20  # batches of candidates drawn before settling for the most confident ones


class SamplerError(DigitgenError, ValueError):
    """A sampler that does not exist, or cannot do what was asked."""


@dataclass
class ClassMixtures:
    """One Gaussian mixture per class over latent codes: weights [C, K], means [C, K, D], Cholesky factors of the
    covariances [C, K, D, D], and each class's share of the training images [C]."""

    weights: torch.Tensor
    means: torch.Tensor
    scale_tril: torch.Tensor
    class_share: torch.Tensor

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("weights", "means", "scale_tril", "class_share")}

    @classmethod
    def from_state(cls, state: dict) -> ClassMixtures:
        return cls(**{k: state[k].double() for k in ("weights", "means", "scale_tril", "class_share")})

    @property
    def n_classes(self) -> int:
        return self.weights.shape[0]

    def class_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z | class) for every class: [N, C]."""
        import torch

        normal = torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril)  # batch [C, K]
        per_component = normal.log_prob(z.double()[:, None, None, :])  # [N, C, K]
        return torch.logsumexp(per_component + self.weights.clamp_min(1e-30).log(), dim=2)

    def class_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """p(class | z) under the mixtures and the class shares: [N, C]."""
        import torch

        return torch.softmax(self.class_log_density(z) + self.class_share.clamp_min(1e-30).log(), dim=1)

    def draw(self, classes: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """One code for each entry of `classes` [N]: a component of that class's mixture, then a Gaussian draw."""
        import torch

        component = torch.multinomial(self.weights[classes], 1, generator=generator).squeeze(1)
        eps = torch.randn(len(classes), self.means.shape[-1], generator=generator, dtype=torch.float64)
        tril = self.scale_tril[classes, component]
        return self.means[classes, component] + temperature * (tril @ eps.unsqueeze(2)).squeeze(2)

    def sample(self, n: int, generator: torch.Generator, cls: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` codes and their classes: classes in the training shares, or all `cls`, drawn near that class's modes
        and kept only where the mixtures agree it is that class (see CLASS_TEMPERATURE, CLASS_CONFIDENCE; a model
        whose classes overlap too much for that gets the n most confident of ROUNDS batches)."""
        import torch

        if cls is None:
            classes = torch.multinomial(self.class_share, n, replacement=True, generator=generator)
            return self.draw(classes, generator).float(), classes
        drawn, confidence = [], []
        for _ in range(ROUNDS):  # draw until n are clearly of the class; a weak model gets its most confident ones
            z = self.draw(torch.full((max(2 * n, 256),), cls), generator, CLASS_TEMPERATURE)
            drawn.append(z)
            confidence.append(self.class_posterior(z)[:, cls])
            if (torch.cat(confidence) >= CLASS_CONFIDENCE).sum() >= n:
                break
        z, confidence = torch.cat(drawn), torch.cat(confidence)
        clear = confidence >= CLASS_CONFIDENCE
        best = z[clear] if clear.sum() >= n else z[confidence.argsort(descending=True)]
        return best[:n].float(), torch.full((n,), cls)


def fit_class_mixtures(
    codes: torch.Tensor, labels: torch.Tensor, n_classes: int, components: int = COMPONENTS, seed: int = 0
) -> ClassMixtures:
    """Fit a full-covariance Gaussian mixture with `components` components to each class's codes [N, D]."""
    import torch
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    codes, labels = codes.detach().double().cpu(), labels.cpu()
    counts = torch.bincount(labels, minlength=n_classes)
    if counts.min() < 2:
        raise SamplerError(
            f"class {counts.argmin().item()} has {counts.min().item()} training images; a mixture "
            "needs at least 2 per class"
        )
    components = min(components, counts.min().item() // 2)  # the rarest class limits every class alike
    weights, means, trils = [], [], []
    for c in range(n_classes):
        mine = codes[labels == c]
        # One BLAS/OpenMP thread: these small matrices gain nothing from two, and beside torch's threads two made the
        # fits 9x slower (measured: 7.1 s against 0.8 s for ten classes on 2 cores); the result is the same.
        with threadpool_limits(limits=1):
            gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed)
            gm.fit(mine.numpy())
        weights.append(torch.from_numpy(gm.weights_))
        means.append(torch.from_numpy(gm.means_))
        trils.append(torch.linalg.cholesky(torch.from_numpy(gm.covariances_)))
    share = torch.bincount(labels, minlength=n_classes).double()
    return ClassMixtures(torch.stack(weights), torch.stack(means), torch.stack(trils), share / share.sum())


def check_sampler(sampler: str, cls: int | None = None) -> None:
    """Refuse a sampler that does not exist, or a class asked of the prior (which knows none)."""
    if sampler not in SAMPLERS:
        raise SamplerError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "prior" and cls is not None:
        raise SamplerError("the prior knows no classes: a chosen class needs --sampler gmm")


def draw_codes(
    sampler: str,
    n: int,
    model,
    generator: torch.Generator,
    mixtures: ClassMixtures | None = None,
    cls: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`n` codes (on the CPU) for `model` from a sampler, and their classes (None for the prior, which knows none)."""
    check_sampler(sampler, cls)
    if sampler == "prior":
        return model.sample_prior(n, generator), None
    if mixtures is None:
        raise SamplerError("this model has no fitted mixtures (samplers.pt): use --sampler prior, or retrain")
    if cls is not None and not 0 <= cls < mixtures.n_classes:
        raise SamplerError(f"class {cls} does not exist: choose one from 0 to {mixtures.n_classes - 1}")
    return mixtures.sample(n, generator, cls)


def save_mixtures(path, fitted: dict[str, ClassMixtures], **info) -> None:
    """Write each model's mixtures ({"vae": ..., "ae": ...}) to `path` (a run's samplers.pt), atomically."""
    import torch

    from digitgen.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"mixtures": {k: m.state() for k, m in fitted.items()}, **info}, tmp)


def load_mixtures(path, kind: str) -> ClassMixtures | None:
    """The mixtures fitted to `kind`'s codes ("vae" or "ae"), or None when the run has none (made before samplers
    were fitted); a clear error when the file is damaged."""
    from pathlib import Path

    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return ClassMixtures.from_state(state["mixtures"][kind])
    except Exception as e:
        raise SamplerError(
            f"{path} is damaged ({type(e).__name__}: {str(e)[:200]}); delete it and rerun the "
            "run to fit the samplers again, or use --sampler prior"
        ) from None
