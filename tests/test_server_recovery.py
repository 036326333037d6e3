"""A team's server under load and faults: runs of two deployments at once take turns on the global concurrency
limit, and a run killed mid-training is re-run by the automation and resumes; against a live PostgreSQL-backed
server with the deployments of prefect.yaml served."""

from __future__ import annotations

import json
import os
from pathlib import Path

from live_server import SLOW, _client, _wait


def test_the_server_keeps_its_state_in_postgres(server, together, pg):
    """The live server of these tests runs on PostgreSQL: the flow run is a row of its database there."""
    rows = pg.query(server["database"], f"select state_type from flow_run where id = '{together[0].id}'")
    assert rows == ["COMPLETED"], rows


def _trainings(run_id) -> list[tuple]:
    """(start, end) of each model's training in a flow run, from its logs: from "Training X on" to "X trained in"."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with _client() as c:
        logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    spans = []
    for kind in ("VAE", "AE"):
        start = [log.timestamp for log in logs if log.message.startswith(f"Training {kind} on")]
        end = [log.timestamp for log in logs if log.message.startswith(f"{kind} trained in")]
        assert len(start) == 1 and len(end) == 1, [log.message for log in logs]
        spans.append((start[0], end[0]))
    return spans


def test_one_training_at_a_time_across_deployments(server, together):
    """Runs of two deployments at once all complete, and no two trainings overlap: each run holds the global
    concurrency limit digitgen-training, which `digitgen serve` created, around its training and evaluation."""
    from digitgen.limits import TRAINING

    assert all(r.state.is_completed() for r in together), [r.state for r in together]
    assert len({r.deployment_id for r in together}) == 2, "runs of two deployments"
    spans = sorted(span for r in together for span in _trainings(r.id))
    assert len(spans) == 2 * len(together)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans
    with _client() as c:
        limit = c.read_global_concurrency_limit_by_name(TRAINING)
    assert limit.limit == 1 and limit.active_slots == 0


def _flow_processes(flow_run_id) -> list[int]:
    """The processes running a flow run: those whose environment names it."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_a_run_killed_mid_training_is_re_run_and_resumes_to_the_same_result(server, together):
    """kill -9 of the flow's process mid-training: the run is Crashed, the automation schedules it again, it resumes
    in its own folder (named after the flow run) and ends with the uninterrupted run's numbers."""
    import signal

    from prefect.deployments import run_deployment

    from digitgen.alerts import RERUN_CRASHED

    with _client() as c:
        assert [a.name for a in c.read_automations_by_name(RERUN_CRASHED)] == [RERUN_CRASHED]
    straight = json.loads((server["out"] / "together-retrain" / "metrics.json").read_text())
    run = run_deployment(
        "digit-pipeline/retrain", parameters={**SLOW, "data_version": straight["data_version"]}, timeout=0
    )
    folder = server["out"] / f"{run.name}-{str(run.id)[:8]}"
    _wait(
        lambda: (folder / "checkpoints" / "vae-epoch-001.pt").exists(),
        300,
        "the first epoch",
        server["serve_log"],
        every=0.05,
    )
    pids = _flow_processes(run.id)
    assert pids and not (folder / "vae.pt").exists(), "caught mid-training"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    with _client() as c:
        crashed = _wait(
            lambda: any(s.type.value == "CRASHED" for s in c.read_flow_run_states(run.id)),
            120,
            "the Crashed state",
            server["serve_log"],
        )
        assert crashed

        def ended():  # Crashed is final too: wait for the re-run's end
            found = c.read_flow_run(run.id)
            return found if found.state.is_completed() or found.state.is_failed() else None

        done = _wait(ended, 600, "the re-run", server["serve_log"])
    assert done.state.is_completed(), done.state
    assert done.run_count >= 2
    resumed = json.loads((folder / "metrics.json").read_text())
    assert abs(resumed["vae"]["test_neg_elbo_nats"] - straight["vae"]["test_neg_elbo_nats"]) <= 1e-3
    assert abs(resumed["ae"]["test_recon_nats"] - straight["ae"]["test_recon_nats"]) <= 1e-3
