"""The typed shape of metrics.json (RunMetrics and its parts), shared by evaluation, the report, the gate and the tests."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class SamplerScores(BaseModel):
    """How a sampler's decoded images look to the judge classifier (metrics.json: `<model>.samplers.<name>`)."""

    model_config = ConfigDict(extra="forbid")

    inception_score: float = Field(
        description="exp E KL(p(y|x) || p(y)): up to the number of classes, higher is better"
    )
    frechet_distance: float = Field(
        ge=0, description="to the test images, in the judge's feature space; lower is better"
    )
    class_histogram: list[float] = Field(description="share of the samples the judge puts in each class")


class OnDemandScores(BaseModel):
    """Images drawn for a chosen class (metrics.json: `<model>.on_demand`), per class."""

    model_config = ConfigDict(extra="forbid")

    sampler: str
    per_class: int = Field(ge=1, description="images drawn for each class")
    fidelity: list[float] = Field(description="share of each class's images the judge classifies as that class")
    diversity: list[float] = Field(
        description="mean pairwise distance of each class's images in the judge's feature space, relative to the "
        "test images of that class (1 = as varied as real ones; near 0 = copies)"
    )


class GenerationScores(BaseModel):
    """The per-sampler and on-demand scores of one model."""

    model_config = ConfigDict(extra="forbid")

    samplers: dict[str, SamplerScores]
    on_demand: OnDemandScores | None = None

    @classmethod
    def of(cls, model_metrics: ModelMetrics) -> GenerationScores:
        """The generation part of one model's metrics."""
        return cls(samplers=model_metrics.samplers, on_demand=getattr(model_metrics, "on_demand", None))


class ModelMetrics(BaseModel):
    """Test-set scores of one model (metrics.json: "ae"; "vae" adds VAEMetrics' fields). Nats are per image; the
    sample scores at this level are those of decoded N(0, I) draws (also under `samplers.prior`)."""

    model_config = ConfigDict(extra="forbid")

    test_recon_nats: float = Field(description="-log p(x|z) at the code (one posterior draw for the VAE)")
    prior_mismatch_nats: float = Field(description="KL from a Gaussian fitted to the codes to N(0, I)")
    inception_score: float
    frechet_distance: float = Field(ge=0)
    class_histogram: list[float]
    knn_accuracy: float = Field(ge=0, le=1, description="5-NN accuracy of test labels from the codes")
    active_units: int = Field(ge=0)
    samplers: dict[str, SamplerScores] = Field(default_factory=dict)


class VAEMetrics(ModelMetrics):
    test_kl_nats: float  # no bound: a collapsed posterior's KL can come out at -1e-8 in float32
    test_neg_elbo_nats: float
    test_nll_is_nats: float = Field(description="importance-sampled -log p(x), the literature's number")
    test_nll_is_stderr: float = Field(ge=0)
    is_samples: int = Field(ge=1)
    on_demand: OnDemandScores | None = None


class RealDigits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inception_score: float = Field(description="of the real test images: what samples are measured against")


class Judge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_accuracy: float = Field(ge=0, le=1, description="the judge classifier's test accuracy")


class PerModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vae: float
    ae: float


class Histories(BaseModel):
    """Each model's per-epoch record: epoch, train_loss, train_recon, train_kl, test_loss, lr."""

    model_config = ConfigDict(extra="forbid")

    vae: list[dict]
    ae: list[dict]


class RunMetrics(BaseModel):
    """metrics.json of a run, whole: written by evaluation, read by the report, the model gate and the tests."""

    model_config = ConfigDict(extra="forbid")

    vae: VAEMetrics
    ae: ModelMetrics
    test_digits: RealDigits
    classifier: Judge
    quality_samples: int = Field(ge=1, description="generated images scored per sampler")
    train_seconds: PerModel
    dataset: str
    data_version: str | None
    n_train: int = Field(ge=1)
    n_test: int = Field(ge=1)
    epochs: int = Field(ge=1)
    device: str
    history: Histories

    def of(self, kind: str) -> ModelMetrics:
        """The scores of model `kind` ("vae" or "ae")."""
        return getattr(self, kind)

    def write(self, path) -> None:
        """metrics.json, atomically."""
        from digitgen.io import write_json

        write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path) -> RunMetrics:
        """A run's metrics.json, checked against this schema."""
        import json
        from pathlib import Path

        return cls.model_validate(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Metric:
    """One reported test metric: the one description from which the metrics table artifact, the report's table and
    the log line are rendered (`metric_rows`, `metric_line`)."""

    key: str  # its field in metrics.json: under "vae" and "ae", or a per-model field of the run (train_seconds)
    label: str  # the row's name; str.format'ed with {items}, {prior}, {real_is}, {k} (see `metric_rows`)
    short: str  # its name in the log line
    unit: str = "nats"  # "nats" (per image), "s", or "" (a score)
    better: str | None = "lower"  # "lower", "higher", or None (neither)
    fmt: str = ".2f"  # a format spec; "share": the rarest / commonest class; "of latent": n / latent dim
    models: tuple[str, ...] = ("vae", "ae")  # the models that have it
    stderr: str | None = None  # the field holding its standard error, shown as "± se"

    def heading(self, context: dict) -> str:
        notes = [self.unit] if self.unit not in ("", "nats") else []
        notes += [f"{self.better} is better"] if self.better and (self.better, self.unit) != ("lower", "nats") else []
        return self.label.format(**context) + (f" ({', '.join(notes)})" if notes else "")

    def shown(self, metrics: RunMetrics, kind: str, context: dict) -> str:
        """Its value for model `kind` as text ("-" where the model has none)."""
        if kind not in self.models:
            return "-"
        per_model = getattr(metrics, self.key, None)
        value = getattr(per_model, kind) if isinstance(per_model, PerModel) else getattr(metrics.of(kind), self.key)
        if self.fmt == "share":
            return class_spread(value, context["classes"])
        if self.fmt == "of latent":
            return f"{value} / {context['latent_dim']}"
        text = format(value, self.fmt)
        return f"{text} ± {getattr(metrics.of(kind), self.stderr):{self.fmt}}" if self.stderr else text


def class_spread(hist: list[float], classes) -> str:
    """The rarest and the commonest class among samples, named: "Sandal: 4.7% / Trouser: 13.9%"."""
    lo, hi = min(range(len(hist)), key=hist.__getitem__), max(range(len(hist)), key=hist.__getitem__)
    return f"{classes[lo]}: {hist[lo]:.1%} / {classes[hi]}: {hist[hi]:.1%}"


METRICS = [
    Metric("test_recon_nats", "Reconstruction, BCE", "recon"),
    Metric("test_kl_nats", "KL to the prior {prior}", "KL", models=("vae",)),
    Metric("test_neg_elbo_nats", "Negative ELBO", "-ELBO", models=("vae",)),
    Metric(
        "test_nll_is_nats",
        "NLL, importance sampled (k={k})",
        "NLL(k={k})",
        models=("vae",),
        stderr="test_nll_is_stderr",
    ),
    Metric("prior_mismatch_nats", "Codes' distance from N(0, I)", "prior gap", fmt=".1f"),
    Metric("inception_score", "Samples: Inception score, test {items} {real_is:.2f}", "IS", unit="", better="higher"),
    Metric("frechet_distance", "Samples: Fréchet distance to test {items}, classifier features", "FD", unit=""),
    Metric(
        "class_histogram", "Samples: rarest / commonest class share", "class share", unit="", better=None, fmt="share"
    ),
    Metric("knn_accuracy", "Codes: 5-NN label accuracy", "5-NN", unit="", better="higher", fmt=".3f"),
    Metric("active_units", "Codes: active units", "active", unit="", better=None, fmt="of latent"),
    Metric("train_seconds", "Training time", "train", unit="s", better=None, fmt=".1f"),
]


def metric_context(metrics: RunMetrics, classes, items: str, prior: str, latent_dim: int) -> dict:
    """What the metrics' labels and values are worded with."""
    return {
        "items": items,
        "classes": classes,
        "latent_dim": latent_dim,
        "k": metrics.vae.is_samples,
        "real_is": metrics.test_digits.inception_score,
        "prior": "N(0, I)" if prior == "normal" else "(learned mixture)",
    }


def metric_rows(metrics: RunMetrics, context: dict) -> list[tuple[str, str, str]]:
    """(heading, VAE, AE) for each metric of METRICS: the report's table and the metrics table artifact."""
    return [(m.heading(context), m.shown(metrics, "vae", context), m.shown(metrics, "ae", context)) for m in METRICS]


def metric_line(metrics: RunMetrics, context: dict) -> str:
    """The log line: each metric of METRICS by its short name, VAE | AE."""
    return "Test metrics, VAE | AE: " + "; ".join(
        f"{m.short.format(**context)} {m.shown(metrics, 'vae', context)} | {m.shown(metrics, 'ae', context)}"
        for m in METRICS
    )
