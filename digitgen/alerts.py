"""Automations as code. Alerts: post to a webhook when a pipeline run fails or crashes, or when the gate rejects a
model (`digitgen alerts`). Recovery: a pipeline run that crashed is set back to Scheduled, so it runs again as the
same flow run, in the same run folder, from its last complete epoch. `digitgen apply` (run by `make deploy` and
`digitgen serve`) applies recovery always, and the alerts when DIGITGEN_ALERT_WEBHOOK is set.

The webhook's URL is a setting, DIGITGEN_ALERT_WEBHOOK; it is kept in a notification block (`digitgen-alerts`) that the
automations send through. Applying again updates everything in place.
"""

from __future__ import annotations

import os
from datetime import timedelta

WEBHOOK_ENV = "DIGITGEN_ALERT_WEBHOOK"
BLOCK_NAME = "digitgen-alerts"
RUN_FAILED = "digitgen: pipeline run failed or crashed"
MODEL_REJECTED = "digitgen: model rejected by the gate"
RERUN_CRASHED = "digitgen: re-run a crashed pipeline run"


def _block(url: str):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    # The block's own templating ({{subject}}, {{body}}, {{name}}) fills the JSON it posts; the automations' subject
    # and body are rendered by the server first (Jinja, with the flow run or the event in scope).
    return CustomWebhookNotificationBlock(
        name=BLOCK_NAME,
        url=url,
        method="POST",
        timeout=10,
        json_data={"source": "{{name}}", "subject": "{{subject}}", "text": "{{body}}"},
    )


def automations(block_id) -> list:
    """The automations, as Prefect objects: what `apply` writes to the server."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    def notify(name: str, description: str, subject: str, body: str, **trigger) -> Automation:
        """An automation that sends one notification through the block each time its event arrives."""
        return Automation(
            name=name,
            description=description,
            trigger=EventTrigger(posture=Posture.Reactive, threshold=1, within=timedelta(0), **trigger),
            actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)],
        )

    run_failed = notify(
        RUN_FAILED,
        "A digit-pipeline flow run ended Failed or Crashed. A crashed run is re-run automatically; a failed one "
        "resumes in its own run folder from its last complete epoch when retried (the flow run's Retry).",
        subject="digitgen: pipeline run {{ flow_run.name }} {{ flow_run.state.name }}",
        body="Flow run {{ flow_run.name }} of digit-pipeline ended {{ flow_run.state.name }}: "
        "{{ flow_run.state.message }}\nParameters: {{ flow_run.parameters }}\nFlow run id: {{ flow_run.id }}",
        expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": "digit-pipeline"},
        for_each={"prefect.resource.id"},
    )
    model_rejected = notify(
        MODEL_REJECTED,
        "The model gate kept the champion: the new run's VAE did not beat it.",
        subject="digitgen: model of run {{ event.payload.run_name }} rejected",
        body="The gate kept the champion {{ event.payload.champion_run }} ({{ event.payload.champion }} nats): run "
        "{{ event.payload.run_name }} scored {{ event.payload.challenger }} nats ({{ event.payload.metric }}, lower "
        "is better).",
        expect={"digitgen.model.rejected"},
        match={"prefect.resource.id": "digitgen.model.*"},
    )
    return [run_failed, model_rejected]


def recovery():
    """The automation that re-runs a crashed digit-pipeline run: a Crashed state (the run's process died: kill -9,
    out of memory, a lost machine) goes back to Scheduled, and a worker or `digitgen serve` runs it again under the
    same flow run id. The flow caps the attempts (tasks/run.py: MAX_ATTEMPTS), so a run that always crashes ends
    Failed instead of looping."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=RERUN_CRASHED,
        description="A digit-pipeline flow run that crashed is scheduled again: it resumes in its own run folder "
        "from its last complete epoch.",
        trigger=EventTrigger(
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
            expect={"prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "digit-pipeline"},
            for_each={"prefect.resource.id"},
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                message="re-run after a crash: resumes from the last complete epoch",
            )
        ],
    )


def _upsert(client, automation) -> str:
    """Create the automation, or update the one of the same name in place (keeping one)."""
    from prefect.events.schemas.automations import AutomationCore

    core = AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"}))
    found = client.read_automations_by_name(automation.name)
    if found:
        for extra in found[1:]:  # names are not unique on the server: keep one
            client.delete_automation(extra.id)
        client.update_automation(found[0].id, core)
    else:
        client.create_automation(core)
    return automation.name


def apply_recovery() -> list[str]:
    """Create or update the crash re-run automation on the server (PREFECT_API_URL)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [_upsert(client, recovery())]


def apply(url: str | None = None) -> list[str]:
    """Save the webhook block and create or update the alert automations; returns their names. Needs a server
    (PREFECT_API_URL) and the URL (argument or DIGITGEN_ALERT_WEBHOOK)."""
    from prefect.client.orchestration import get_client

    url = url or os.environ.get(WEBHOOK_ENV)
    if not url:
        raise ValueError(
            f"no webhook URL: set {WEBHOOK_ENV} (e.g. a Slack or Teams incoming webhook) to turn alerts on"
        )
    block_id = _block(url).save(BLOCK_NAME, overwrite=True)  # same document id: the automations stay valid
    with get_client(sync_client=True) as client:
        return [_upsert(client, automation) for automation in automations(block_id)]
