"""Watch the data: emit `digitgen.data.changed` when the MNIST archives' checksums change."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from models.data import folder_fingerprint
from models.io import write_json
from models.registry import locked
from tasks.common import in_run, logger

DATA_RESOURCE = {"prefect.resource.id": "digitgen.dataset.mnist", "prefect.resource.name": "MNIST"}


@task(cache_policy=NONE)
def detect_data_change(watched: Path, state_file: Path) -> dict:
    """Compare the watched folder's checksums with the last ones seen; emit an event when they differ."""
    fingerprint = folder_fingerprint(watched)
    with locked(state_file):
        try:
            previous = json.loads(state_file.read_text())["fingerprint"]
        except FileNotFoundError:
            previous = None
        changed = fingerprint != previous
        if changed:
            write_json(
                state_file,
                {"fingerprint": fingerprint, "folder": str(watched), "seen_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            )
    result = {"changed": changed, "fingerprint": fingerprint, "previous": previous, "folder": str(watched)}
    if changed:
        logger().info("Data changed in %s: %s -> %s", watched, previous, fingerprint)
        if in_run():
            emit_event(event="digitgen.data.changed", resource=DATA_RESOURCE, payload=result)
    else:
        logger().info("Data unchanged in %s (%s)", watched, fingerprint)
    return result
