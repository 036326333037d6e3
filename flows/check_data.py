"""A small flow that checks the data for changes and emits the event that triggers the `retrain` deployment."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from digitgen.config import PipelineConfig
from tasks.monitor import detect_data_change


@flow(name="check-data")
def check_data(data_source: Path | None = None, data_root: Path | None = None, out: Path | None = None) -> dict:
    """Watch the data source (or the data root's archives); emit `digitgen.data.changed` when they change."""
    config = PipelineConfig(**{k: v for k, v in locals().items() if v is not None})
    watched = config.data_source or config.data_root / "MNIST" / "raw"
    return detect_data_change(watched, config.out / "data-fingerprint.json")
