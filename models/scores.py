"""The typed shape of metrics.json (RunMetrics and its parts), shared by evaluation, the report, the gate and the tests."""

from __future__ import annotations

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
        from models.io import write_json

        write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path) -> RunMetrics:
        """A run's metrics.json, checked against this schema."""
        import json
        from pathlib import Path

        return cls.model_validate(json.loads(Path(path).read_text()))
