"""Stage 7: report.md in the run folder and the same report as a Prefect markdown artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from digitgen.figures.plots import save_curves
from digitgen.figures.report import render
from digitgen.io import atomic_open
from digitgen.registry.gate import Decision
from digitgen.registry.run_record import read_record
from models.scores import RunMetrics
from tasks.common import logger, markdown_artifact


@task(cache_policy=NONE)
def write_report(
    config: PipelineConfig,
    run_dir: str,
    metrics: RunMetrics,
    decision: Decision,
    figures: dict[str, str],
    version: dict | None = None,
) -> str:
    """Write report.md (and curves.png) and publish the report as the `pipeline-report` artifact."""
    run = Path(run_dir)
    curves = save_curves(
        run / "curves.png",
        {"VAE": ("negative ELBO", metrics.history.vae), "AE": ("reconstruction BCE", metrics.history.ae)},
    )
    figures = {**figures, "curves": str(curves)}
    tracked = read_record(run)
    with atomic_open(run / "report.md") as f:
        f.write(render(config, metrics, decision, figures, inline=False, version=version, tracked=tracked))
    markdown_artifact(
        "pipeline-report",
        render(config, metrics, decision, figures, inline=True, version=version, tracked=tracked),
        f"digitgen report of run {config.run_name}",
    )
    logger().info("Report written to %s", run / "report.md")
    return str(run / "report.md")
