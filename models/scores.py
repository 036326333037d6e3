"""The typed shape of the generation scores in metrics.json, shared by evaluation, the report and the tests."""

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
    def of(cls, model_metrics: dict) -> GenerationScores:
        """Read (and check) the generation part of `metrics.json`'s "vae" or "ae" entry."""
        return cls(samplers=model_metrics["samplers"], on_demand=model_metrics.get("on_demand"))
