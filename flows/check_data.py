"""The check-data deployment: ingest each batch dropped into `<data root>/<dataset>/incoming/`.

Each accepted batch becomes a new data version and emits `digitgen.data.changed`, which triggers `retrain` on it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from digitgen.config import PipelineConfig
from digitgen.errors import DigitgenError
from flows.ingest import ingest_batch
from tasks.batches import BatchRefusedError, list_incoming, set_aside


class IngestFailedError(DigitgenError, RuntimeError):
    """One or more inbox batches could not be ingested for another reason than their checks."""


@flow(name="check-data")
def check_data(
    dataset: str | None = None,
    data_root: Path | None = None,
    data_source: Path | None = None,
    min_label_agreement: float | None = None,
) -> dict:
    """Ingest every waiting batch (of `dataset`, or of every dataset): each is accepted or quarantined, once."""
    settings = {k: v for k, v in locals().items() if v is not None and k != "dataset"}
    config = PipelineConfig(progress=False, **settings, **({"dataset": dataset} if dataset else {}))
    outcomes, failed = {}, []
    for name, folder in list_incoming(config, every_dataset=dataset is None):
        folder, key = Path(folder), f"{name}/{Path(folder).name}"
        state = ingest_batch(folder, dataset=name, consume=True, progress=False, return_state=True, **settings)
        if state.is_completed():
            outcomes[key] = state.result()["id"]
            continue
        error = state.result(raise_on_failure=False)
        if isinstance(error, BatchRefusedError):
            outcomes[key] = "refused"
        elif not folder.exists():  # taken from the inbox by another run meanwhile: that run records it
            outcomes[key] = "taken by another run"
        else:
            outcomes[key] = "failed"
            set_aside(config.model_copy(update={"dataset": name}), folder, error)
            failed.append(f"{key}: {type(error).__name__}: {error}")
    if failed:
        raise IngestFailedError("could not ingest (set aside in quarantine/ with the error):\n  " + "\n  ".join(failed))
    return {"batches": outcomes}
