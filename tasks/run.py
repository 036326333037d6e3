"""The run folder: created once per run, never shared between runs."""

from __future__ import annotations

from prefect import task

from digitgen.config import PipelineConfig
from models.io import write_json
from tasks.common import logger


@task
def start_run(config: PipelineConfig) -> str:
    """Create `<out>/<run_name>/` (refusing an existing one) and write config.json into it."""
    run_dir = config.run_dir
    config.check_writable()
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise FileExistsError(f"run folder {run_dir} already exists; choose another --run-name") from None
    write_json(run_dir / "config.json", config.model_dump(mode="json"))
    logger().info("Run folder: %s", run_dir.resolve())
    return str(run_dir)
