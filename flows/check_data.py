"""The check-data deployment: ingest each batch dropped into `<data root>/<dataset>/incoming/`.

Each accepted batch becomes a new data version and emits `digitgen.data.changed`, which triggers `retrain` on it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from digitgen.config import PipelineConfig
from flows.ingest import ingest_batch
from models.errors import DigitgenError
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
        state = ingest_batch(Path(folder), dataset=name, consume=True, progress=False, return_state=True, **settings)
        if state.is_completed():
            outcomes[f"{name}/{Path(folder).name}"] = state.result()["id"]
            continue
        error = state.result(raise_on_failure=False)
        if isinstance(error, BatchRefusedError):
            outcomes[f"{name}/{Path(folder).name}"] = "refused"
        elif not Path(folder).exists():  # taken from the inbox by another run meanwhile: that run records it
            outcomes[f"{name}/{Path(folder).name}"] = "taken by another run"
        else:
            outcomes[f"{name}/{Path(folder).name}"] = "failed"
            set_aside(config.model_copy(update={"dataset": name}), Path(folder), error)
            failed.append(f"{name}/{Path(folder).name}: {type(error).__name__}: {error}")
    if failed:
        raise IngestFailedError("could not ingest (set aside in quarantine/ with the error):\n  " + "\n  ".join(failed))
    return {"batches": outcomes}
