"""Reaching the Prefect server, and applying to it what the deployments rely on (limits, automations, alerts):
shared by the `digitgen` command and `digitgen serve`."""

from __future__ import annotations

import os
import sys


def require_reachable_server() -> None:
    """When PREFECT_API_URL names a server, fail at once (not after a hang) if it does not answer. Asked through
    Prefect's client, so the API key (PREFECT_API_KEY, Prefect Cloud) and the auth string are sent."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return  # no server configured: the CLI starts a temporary local one
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        sys.exit(
            f"digitgen: the Prefect server at {url} is not reachable ({type(error).__name__}), nothing was run.\n"
            "  Start it with `make server` (or `prefect server start --host 127.0.0.1`), or unset PREFECT_API_URL "
            "to run with a temporary local server."
        )


def apply_alerts(required: bool) -> None:
    """Apply the alert automations; without DIGITGEN_ALERT_WEBHOOK, say how to turn them on (an error if asked for)."""
    from digitgen.alerts import WEBHOOK_ENV, apply

    if not os.environ.get(WEBHOOK_ENV):
        message = f"digitgen: alerts are off: set {WEBHOOK_ENV} to a webhook URL to be told of failed runs and rejected models"
        if required:
            sys.exit(message)
        print(message, file=sys.stderr)
        return
    require_reachable_server()
    for name in apply():
        print(f"alert applied: {name}", file=sys.stderr)


def apply_server_objects() -> None:
    """The server-side objects kept in this repository: global concurrency limits, the crash re-run automation,
    and the alerts when DIGITGEN_ALERT_WEBHOOK is set."""
    from digitgen.alerts import apply_recovery
    from digitgen.limits import ensure_limits

    require_reachable_server()
    for name in ensure_limits():
        print(f"global concurrency limit: {name}", file=sys.stderr)
    for name in apply_recovery():
        print(f"automation applied: {name}", file=sys.stderr)
    apply_alerts(required=False)
