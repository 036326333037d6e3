"""Generation on demand, as a deployment: ask the UI's run form for sixty-four 7s and see them as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from digitgen.config import DatasetName
from tasks.generate import generate_grid


@flow(name="generate-digits")
def generate_digits(
    digit: Annotated[int, Field(ge=0, le=99)] | None = None,
    n: Annotated[int, Field(ge=1, le=1024)] = 64,
    source: str = "champion",
    sampler: Literal["gmm", "prior"] = "gmm",
    seed: Annotated[int, Field(ge=0)] = 0,
    model: Literal["vae", "ae"] = "vae",
    dataset: DatasetName = "mnist",
    runs: Path | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Draw new images with a trained model and publish them (artifact `generated-digits`); returns the PNG's path.

    Args:
        digit: every image is meant to be of this class (unset: classes as in the training data)
        n: how many images
        source: a run folder, or `champion`: the current champion of the dataset
        sampler: gmm: per-class Gaussian mixtures fitted to the codes; prior: N(0, I)
        seed: same seed, same images
        model: whose decoder
        dataset: whose champion
        runs: where generated/ is written and the local MLflow store is (unset: env DIGITGEN_OUT, or artifacts)
        tracking_uri: the MLflow server holding the champion (unset: env MLFLOW_TRACKING_URI, else <runs>/mlflow.db)
    """
    return generate_grid(source, n, digit, sampler, seed, model, dataset, runs, tracking_uri)
