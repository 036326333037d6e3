"""Prefect global concurrency limits that hold across every worker of a server: one training at a time, and one
champion decision at a time. `digitgen apply` (run by `make deploy` and `digitgen serve`) creates them on the team's
server; a server without them (a bare run's temporary one) limits nothing. A team with more room raises a limit on
the server (`prefect gcl update digitgen-training --limit 2`); applying again never lowers it.

Slots are leased: a run killed while holding one (kill -9, a lost machine) frees it when its lease runs out, within
LEASE_SECONDS plus the server's repossessor interval (15 s), so a re-run of the same flow run is not locked out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

TRAINING = "digitgen-training"  # held around a run's training and evaluation, and around each sweep point
CHAMPION = "digitgen-champion"  # held around the gate's read-compare-write of the champion record
LIMITS = {TRAINING: 1, CHAMPION: 1}
LEASE_SECONDS = 60  # the server's minimum; renewed in the background while held


def ensure_limits() -> list[str]:
    """Create the limits that the server does not have yet (an existing one keeps its value); returns their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for name, limit in LIMITS.items():
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # created by another run just now
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
    return list(LIMITS)


def _exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


@contextlib.contextmanager
def held(name: str, what: str, log) -> Iterator[None]:
    """Hold one slot of the global limit `name` for the block, waiting as long as it takes; logs a wait. On a server
    without the limit (not set up by `digitgen apply`: a run's own temporary server, a test harness) nothing is held:
    such a server may not reclaim the leases of a killed run, and Prefect would log a warning for each training."""
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value() or not _exists(name):  # no server at all (`digitgen promote` alone), or no limit
        yield
        return
    asked = time.monotonic()
    with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS):
        waited = time.monotonic() - asked
        if waited > 1:
            log.info("%s waited %.0f s for a slot of the global concurrency limit %s", what, waited, name)
        yield
