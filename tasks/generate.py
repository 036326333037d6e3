"""Generation on demand: new images from the champion (or a run folder), published as the `generated-digits` artifact."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from models.generate import generate, resolve_source, run_dataset, save_generated
from models.train import pick_device
from tasks.common import logger, markdown_artifact, png_data_uri


@task(cache_policy=NONE)
def generate_grid(source: str, n: int, digit: int | None, sampler: str, seed: int, model: str, dataset: str,
                  runs: Path) -> str:  # fmt: skip
    """Draw `n` images (all of class `digit` when given) and write `<runs>/generated/<time>-<class>-<n>.png`."""
    run = resolve_source(source, runs, dataset)
    spec = run_dataset(run)
    images, classes = generate(run, n, digit, sampler, seed, model, pick_device("auto"))
    what = "all" if digit is None else spec.classes[digit]
    path = Path(runs) / "generated" / f"{time.strftime('%Y%m%d-%H%M%S')}-{what}-{n}.png".replace(" ", "_")
    title = f"{model.upper()} of {run.name}: {n} {spec.items}" + (
        f" drawn for class {what}" if digit is not None else ""
    )
    save_generated(path, images, classes, spec, f"{title} (sampler {sampler}, seed {seed})")
    markdown_artifact(
        "generated-digits",
        f"# {title}\n\nSampler `{sampler}`, seed {seed}; model `{run / (model + '.pt')}`; file `{path}`.\n\n"
        f"![{title}]({png_data_uri(path)})\n",
        f"{n} generated {spec.items}" + (f" of class {what}" if digit is not None else ""),
    )
    logger().info("%s -> %s", title, path)
    return str(path)
