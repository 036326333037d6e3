"""The check-data deployment: ingest each batch dropped into `<data root>/<dataset>/incoming/`.

Each accepted batch becomes a new data version and emits `digitgen.data.changed`, which triggers `retrain` on it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from digitgen.config import PipelineConfig
from flows.ingest import ingest_batch
from tasks.batches import list_incoming


@flow(name="check-data")
def check_data(
    dataset: str | None = None,
    data_root: Path | None = None,
    data_source: Path | None = None,
    min_label_agreement: float | None = None,
) -> dict:
    """Ingest every waiting batch (accepted or quarantined, each exactly once); returns the outcome per batch."""
    settings = {k: v for k, v in locals().items() if v is not None}
    config = PipelineConfig(progress=False, **settings)
    outcomes = {}
    for folder in list_incoming(config):
        state = ingest_batch(Path(folder), consume=True, return_state=True, progress=False, **settings)
        outcomes[Path(folder).name] = state.result()["id"] if state.is_completed() else "refused"
    return {"dataset": config.dataset, "batches": outcomes}
