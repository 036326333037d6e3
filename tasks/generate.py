"""Generation on demand: new images from the champion (or a run folder), published as the `generated-digits` artifact."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import default_out
from digitgen.figures.plots import png_data_uri
from digitgen.registry.gate import champion_files
from digitgen.registry.tracking import ALIAS
from models.generate import generate_file, resolve_source, run_dataset
from models.train import pick_device
from tasks.common import logger, markdown_artifact


@task(cache_policy=NONE)
def generate_grid(
    source: str,
    n: int,
    digit: int | None,
    sampler: str,
    seed: int,
    model: str,
    dataset: str,
    runs: Path | None,
    tracking_uri: str | None = None,
) -> str:
    """Draw `n` images (all of class `digit` when given) and write `<runs>/generated/<time>-<class>-<n>.png`; `runs`
    defaults to DIGITGEN_OUT, else artifacts/. SOURCE `champion`: the version `models:/digitgen-<dataset>@champion`
    names, downloaded from MLflow (MLFLOW_TRACKING_URI, else <runs>/mlflow.db)."""
    runs = Path(runs or default_out())
    with tempfile.TemporaryDirectory() as tmp:
        if source == "champion":
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
            run, champion = champion_files(runs, uri, dataset, Path(tmp))
            name, shown = champion["run_name"], f"models:/{champion['name']}@{ALIAS} (version {champion['version']})"
        else:
            run = resolve_source(source)
            name, shown = run.name, str(run / (model + ".pt"))
        spec = run_dataset(run)
        path = runs / "generated" / f"{time.strftime('%Y%m%d-%H%M%S')}-{'all' if digit is None else digit}-{n}.png"
        path, title = generate_file(run, path, n, digit, sampler, seed, model, pick_device("auto"), name=name)
    markdown_artifact(
        "generated-digits",
        f"# {title}\n\nModel `{shown}`; file `{path}`.\n\n![{title}]({png_data_uri(path)})\n",
        f"{n} generated {spec.items}" + (f" of class {spec.classes[digit]}" if digit is not None else ""),
    )
    logger().info("%s -> %s", title, path)
    return str(path)
