"""A run's MLflow run: opened when its folder is (or reopened when it resumes), filled when the run is complete,
marked failed when the flow fails. `<run folder>/mlflow.json` says which MLflow run it is."""

from __future__ import annotations

import json
import re
from pathlib import Path

from digitgen.config import PipelineConfig, default_out
from digitgen.registry import locks, run_record, tracking
from digitgen.registry.gate import import_json_record
from tasks.common import logger


def check_store(config: PipelineConfig) -> tracking.Store:
    """The run's tracking store, reachable and with any JSON champion record of old imported: before any training."""
    from tasks.promote import champion_path, registered_model

    store = tracking.Store.open(config.out, config.tracking_uri)
    with locks.gate_lock(config.out):
        import_json_record(store, config.dataset, registered_model(config), champion_path(config))
    return store


def open_run(store: tracking.Store, config: PipelineConfig, run_dir: Path) -> dict:
    """Create the run's MLflow run (params: every setting; tags: data version, git commit, Prefect flow run), or
    reopen the one of an interrupted run; returns mlflow.json's record."""
    from prefect.runtime import flow_run

    record = run_record.read_record(run_dir)
    if record and record.get("tracking_uri") == store.uri:
        with locks.writing(store.uri):
            store.client.update_run(record["run_id"], status="RUNNING")
        return record
    tags = {
        "digitgen.data_version": config.data_version,
        "digitgen.run_dir": str(run_dir.resolve()),
        "mlflow.source.git.commit": run_record.git_commit(),
        "mlflow.source.name": "flows/pipeline.py",
        "prefect.flow_run_id": flow_run.id,
        "prefect.flow_run_url": flow_run.ui_url if flow_run.id else None,
    }
    run_id = store.start_run(config.dataset, config.run_name, config.model_dump(mode="json", exclude={"resume"}), tags)
    experiment_id = store.client.get_run(run_id).info.experiment_id
    record = {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "tracking_uri": store.uri,
        "url": store.run_url(experiment_id, run_id),
    }
    run_record.write_record(run_dir, record)
    logger().info("MLflow run %s: %s", run_id, record["url"])
    return record


def log_results(config: PipelineConfig, run_dir: str) -> tuple[tracking.Store, dict]:
    """Log the complete run folder to its MLflow run, once: both models' losses per epoch (step = epoch), every
    number of metrics.json (flattened with dots), the report, metrics, settings and figures, and the model's files
    under model/ (what a registered version is made from)."""
    run = Path(run_dir)
    record = run_record.read_record(run)
    if record is None:
        raise tracking.TrackingError(f"{run} has no {run_record.RECORD}: it was not started by a tracked run")
    store = tracking.Store.open(config.out, config.tracking_uri)
    if record.get("logged"):
        return store, record
    metrics = json.loads((run / "metrics.json").read_text())
    store.log_steps(record["run_id"], run_record.epoch_metrics(metrics.get("history", {})))
    store.log_metrics(record["run_id"], run_record.numeric_metrics(metrics))
    store.log_files(
        record["run_id"], [run / "report.md", run / "metrics.json", run / "config.json", *sorted(run.glob("*.png"))]
    )
    store.log_files(record["run_id"], [run / f for f in tracking.MODEL_FILES if (run / f).is_file()], "model")
    record = {**record, "logged": True}
    run_record.write_record(run, record)
    return store, record


def mark_failed(flow, flow_run, state) -> None:
    """Flow hook: a failed or crashed run's MLflow run is marked FAILED (a resumed run reopens it)."""
    params = {k: v for k, v in (flow_run.parameters or {}).items() if v is not None}
    if params.get("resume"):
        run_dir = Path(params["resume"])
    else:
        name = params.get("run_name") or re.sub(r"[^A-Za-z0-9._-]", "-", f"{flow_run.name}-{str(flow_run.id)[:8]}")
        run_dir = Path(params.get("out") or default_out()) / name
    record = run_record.read_record(run_dir)
    if not record or record.get("finished"):
        return
    try:
        tracking.require_reachable(record["tracking_uri"])  # a server that is down: one look, not MLflow's retries
        tracking.Store(record["tracking_uri"], run_dir.parent).finish(record["run_id"], "FAILED")
    except Exception as e:  # the store may be what failed
        logger().warning("MLflow run %s not marked failed: %s", record["run_id"], tracking._short(e))
