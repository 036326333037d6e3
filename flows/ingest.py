"""Ingest a batch of labelled images: check it, then add it as a new data version or quarantine it."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import Failed

from digitgen.config import PipelineConfig
from tasks.batches import add_to_dataset, check_new_batch, quarantine_batch, refusal
from tasks.classifier import train_judge
from tasks.ingest import download_data


@flow(name="ingest-batch")
def ingest_batch(
    batch: Path,
    dataset: str | None = None,
    data_root: Path | None = None,
    data_source: Path | None = None,
    min_label_agreement: float | None = None,
    classifier_epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    consume: bool = False,
) -> dict:
    """Check `batch` against the newest version; accepted: a new version (returned), refused: quarantined, and the
    flow run fails with the refusal as its message (a call raises BatchRefusedError).

    `consume`: move the batch folder out of its place (the check-data inbox) instead of only reading it.
    """
    settings = {k: v for k, v in locals().items() if v is not None and k not in ("batch", "consume")}
    config = PipelineConfig(**settings)
    batch = Path(batch).resolve()  # its own name, even when given as "." or "batch/"
    data = download_data(config.dataset, config.data_root, config.data_source)
    judge = train_judge(config, data["fingerprint"])
    outcome = check_new_batch(config, batch, judge)
    if not outcome["accepted"]:  # an expected end, not a crash: the flow run fails with the refusal, no traceback
        refused = refusal(outcome, quarantine_batch(config, batch, outcome, consume))
        return Failed(message=str(refused), data=refused)
    return add_to_dataset(config, batch, outcome, consume)
