"""The run folder: created once per run, never shared between runs."""

from __future__ import annotations

from prefect import task

from digitgen.config import PipelineConfig
from models.io import write_json
from tasks.common import logger


@task
def start_run(config: PipelineConfig) -> str:
    """Create `<out>/<run_name>/` and write config.json, or reopen an interrupted run of the same settings."""
    run_dir = config.run_dir
    config.check_writable()
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        saved = run_dir / "config.json"
        if (run_dir / "report.md").exists() or not saved.exists():
            raise FileExistsError(
                f"run folder {run_dir} already exists and holds a complete run (or no run); choose another --run-name"
            ) from None
        if not config.same_run_as(PipelineConfig.for_resume(run_dir)):
            raise FileExistsError(
                f"run folder {run_dir} holds an interrupted run with other settings; resume it with "
                f"--resume {run_dir}, or choose another --run-name"
            ) from None
        logger().info("Resuming the interrupted run in %s from its last complete epoch", run_dir.resolve())
        return str(run_dir)
    write_json(run_dir / "config.json", config.model_dump(mode="json", exclude={"resume"}))
    logger().info("Run folder: %s", run_dir.resolve())
    return str(run_dir)
