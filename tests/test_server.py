"""Against the real thing: a `prefect server` on a free loopback port, the deployments of prefect.yaml served,
runs triggered through the API and by an event (the UI in Chromium: tests/test_ui.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from live_server import (
    BIN,
    PROBE_YAML,
    ROOT,
    WHOLE,
    _client,
    _Receiver,
    _run_filter,
    _start,
    _stop,
    _wait,
)


def test_deployment_run_through_the_api(server, api_run):
    with _client() as c:
        tasks = c.read_task_runs(flow_run_filter=_run_filter(api_run.id))
        artifacts = c.read_artifacts(flow_run_filter=_run_filter(api_run.id))
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"download_data", "validate_data", "train_vae", "train_ae", "evaluate", "promote", "write_report"} <= names
    assert all(t.state.is_completed() for t in tasks)
    keys = {a.key for a in artifacts}
    assert {"pipeline-report", "vae-metrics", "data-validation"} <= keys
    assert {"vae-training", "ae-training", "vae-epochs", "ae-epochs", "champion"} <= keys
    progress = [a for a in artifacts if a.type == "progress"]
    assert len(progress) == 2 and all(a.data == 100.0 for a in progress), [(a.key, a.data) for a in progress]
    epochs = json.loads(next(a for a in artifacts if a.key == "vae-epochs").data)
    assert [r["epoch"] for r in epochs] == [1] and epochs[0]["test_loss"] > 0
    champion = next(a for a in artifacts if a.key == "champion").data
    assert "via-api" in champion and "promoted" in champion and "data:image/png;base64," in champion
    assert (server["out"] / "via-api" / "report.md").is_file()
    from conftest import champion_of

    assert champion_of(server["out"])["run_name"] == "via-api"


def test_generate_deployment_publishes_the_asked_for_digits(server, api_run):
    """Sixty-four 7s asked for through the deployment (as from the UI's run form) arrive as a PNG and as the
    `generated-digits` artifact."""
    from prefect.deployments import run_deployment

    run = run_deployment("generate-digits/generate", parameters={"digit": 7, "n": 64}, timeout=300, poll_interval=2)
    assert run.state.is_completed(), server["serve_log"].read_text()[-3000:]
    with _client() as c:
        artifacts = c.read_artifacts(flow_run_filter=_run_filter(run.id))
    shown = next(a for a in artifacts if a.key == "generated-digits").data
    assert "64 digits drawn for class 7" in shown and "data:image/png;base64," in shown
    pngs = list((server["out"] / "generated").glob("*-7-64.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(Exception, match="409"):  # the form's bounds hold on the server
        run_deployment("generate-digits/generate", parameters={"n": 0}, timeout=0)


def test_the_readme_prefect_commands_work_pasted_into_a_shell(server, api_run):
    """The README's `make generate` and `make prefect` lines, taken from the README as written and run through the
    shell, reach the project's server (not a temporary one of a bare `prefect`)."""
    import re

    readme = (ROOT / "README.md").read_text()
    lines = {m.group(1) for m in re.finditer(r"^(make (?:generate|prefect) ARGS=\"[^\"]*\")", readme, re.M)}
    assert any(line.startswith("make generate") for line in lines) and any("flow-run ls" in line for line in lines)
    env = {
        **os.environ,
        "PREFECT_API_URL": f"{server['url']}/api",
        "PREFECT_HOME": str(server["tmp"] / "home"),
        "COLUMNS": "300",
    }
    for line in sorted(lines):
        done = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, line + "\n" + done.stdout[-2000:] + done.stderr[-2000:]
        assert "temporary server" not in done.stdout + done.stderr, line
        if line.startswith("make generate"):
            assert "Created flow run" in done.stdout, done.stdout[-2000:]
        else:
            assert api_run.name in done.stdout, done.stdout[-2000:]  # the server's runs, listed


def test_retraining_loop_new_batch_to_retrained_model(server, mnist, fashion, tmp_path):
    """A good batch dropped into incoming/ is ingested by check-data, whose event starts a retrain on exactly the
    new version; a refused batch is quarantined and starts nothing."""
    from batch_factory import new_handwriting, pick, write_batch
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.deployments import run_deployment
    from prefect.types import DateTime

    from digitgen.data.datasets import get_dataset
    from digitgen.data.versions import list_versions

    incoming = server["data_root"] / "mnist" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    images, labels = pick(mnist.train_images, mnist.train_labels, 150, seed=11)
    write_batch(tmp_path / "new-writers", new_handwriting(images, seed=11), labels)
    (tmp_path / "new-writers").rename(incoming / "new-writers")  # a rename: the batch appears whole
    started = DateTime.now("UTC")
    check = run_deployment("check-data/check-data", timeout=300, poll_interval=2)
    assert check.state.is_completed(), server["serve_log"].read_text()[-3000:]
    version = list_versions(server["data_root"], get_dataset("mnist"))[-1]
    assert version["batches"][-1]["name"] == "new-writers"
    assert not (incoming / "new-writers").exists(), "a processed batch leaves the inbox"
    with _client() as c:
        retrain = c.read_deployment_by_name("digit-pipeline/retrain")

        def retrain_runs():
            return c.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain.id])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
            )

        def triggered():
            done = [r for r in retrain_runs() if r.state and r.state.is_final()]
            return done[0] if done else None

        run = _wait(
            triggered, 400, "the retrain run that the digitgen.data.changed event triggers", server["serve_log"]
        )
        assert run.state.is_completed(), server["serve_log"].read_text()[-3000:]
        assert run.parameters["data_version"] == version["id"]
        folders = [p for p in server["out"].iterdir() if (p / "metrics.json").is_file()]
        metrics = [json.loads((p / "metrics.json").read_text()) for p in folders]
        assert any(m["data_version"] == version["id"] and m["n_train"] == 2150 for m in metrics)

        # Fashion-MNIST images filed under digit labels: quarantined, no new version, no retrain.
        images, labels = pick(fashion.train_images, fashion.train_labels, 150, seed=12)
        write_batch(tmp_path / "garments", images, labels)
        (tmp_path / "garments").rename(incoming / "garments")
        again = run_deployment("check-data/check-data", timeout=300, poll_interval=2)
        assert again.state.is_completed()
        assert (server["data_root"] / "mnist" / "quarantine" / "garments" / "validation.json").is_file()
        assert list_versions(server["data_root"], get_dataset("mnist"))[-1]["id"] == version["id"]
        time.sleep(10)
        runs = retrain_runs()
        assert len(runs) == 1, [(r.name, r.state_name, r.created_by) for r in runs]


def test_the_readme_retrain_command_works_pasted_into_a_shell(server):
    """`make retrain ARGS=...` as the README writes it, through the shell, starts the served deployment."""
    env = {**os.environ, "PREFECT_API_URL": f"{server['url']}/api", "PREFECT_HOME": str(server["tmp"] / "home")}
    done = subprocess.run(
        'make retrain ARGS="-p epochs=1 -p run_name=pasted"',
        shell=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Created flow run" in done.stdout
    _wait(lambda: (server["out"] / "pasted" / "report.md").is_file(), 400, "the pasted retrain", server["serve_log"])


def test_run_form_is_typed_and_the_server_refuses_bad_values(server):
    """The deployment's parameter schema, read back from the server, has choices, defaults, bounds and
    descriptions; an out-of-range value is refused when the run is submitted, before anything starts."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    with _client() as c:
        retrain = c.read_deployment_by_name("digit-pipeline/retrain")
        before = len(c.read_flow_runs())
    props = retrain.parameter_openapi_schema["properties"]
    assert props["dataset"]["enum"] == ["mnist", "fashion-mnist"] and props["dataset"]["default"] == "mnist"
    assert props["binarize"]["enum"] == ["none", "dynamic", None]  # unset (null) lets the preset choose
    assert props["preset"]["enum"] == ["default", "quality"] and props["preset"]["default"] == "default"
    assert props["beta"]["default"] == 1.0 and props["beta"]["minimum"] == 0.0
    assert props["epochs"]["anyOf"][0]["minimum"] == 1 and props["epochs"]["anyOf"][0]["type"] == "integer"
    assert all(p.get("description") for p in props.values()), [k for k, p in props.items() if not p.get("description")]
    assert "KL term" in props["beta"]["description"]
    for bad in ({"epochs": 0}, {"arch": "resnet"}, {"beta": "a lot"}):
        with pytest.raises(PrefectHTTPStatusError, match="409"):
            run_deployment("digit-pipeline/retrain", parameters=bad, timeout=0)
    with _client() as c:
        assert len(c.read_flow_runs()) == before, "a refused run leaves nothing behind"


def test_one_pipeline_at_a_time_the_second_waits(server, together):
    """Two runs of the retrain deployment submitted back to back: both complete, and the one that waited starts only
    after the other has finished (queued for the deployment's concurrency slot, not cancelled)."""
    retrains = together[1:]  # the nightly run beside them has a slot of its own deployment
    with _client() as c:
        retrain = c.read_deployment_by_name("digit-pipeline/retrain")
        assert retrain.global_concurrency_limit.limit == 1
        assert retrain.concurrency_options.collision_strategy == "ENQUEUE"
        assert {r.deployment_id for r in retrains} == {retrain.id}
        assert all(r.state.is_completed() for r in retrains), [r.state for r in retrains]
        a, b = sorted(retrains, key=lambda r: r.start_time)  # either may win the slot
        assert b.start_time >= a.end_time, (a.start_time, a.end_time, b.start_time)
        waited = [s.name for s in c.read_flow_run_states(b.id)]
        assert "AwaitingConcurrencySlot" in waited, waited


def test_alerts_reach_the_webhook_when_a_run_fails_and_a_model_is_rejected(server, api_run):
    """`digitgen alerts` (as `make deploy` runs it) applies the automations; a failed run and a model the gate
    rejects each post to the webhook whose URL is the DIGITGEN_ALERT_WEBHOOK setting."""
    from prefect.deployments import run_deployment

    from digitgen.alerts import MODEL_REJECTED, RUN_FAILED

    hook = _Receiver()
    try:
        env = {
            **os.environ,
            "PREFECT_API_URL": f"{server['url']}/api",
            "PREFECT_HOME": str(server["tmp"] / "home"),
            "DIGITGEN_ALERT_WEBHOOK": hook.url,
        }
        for _ in range(2):  # applying again updates in place
            done = subprocess.run(
                [str(BIN / "digitgen"), "alerts"], env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr
        with _client() as c:
            names = [a.name for a in c.read_automations()]
        assert names.count(RUN_FAILED) == 1 and names.count(MODEL_REJECTED) == 1, names

        # a batch larger than the training set: the flow refuses its settings and the run fails
        failed = run_deployment(
            "digit-pipeline/retrain",
            parameters={"train_limit": 100, "run_name": "doomed"},
            timeout=300,
            poll_interval=2,
        )
        assert failed.state.is_failed(), failed.state
        post = _wait(lambda: hook.find(failed.name), 120, "the failed-run alert", server["serve_log"])
        assert "Failed" in post["subject"] and "batch_size" in post["text"], post

        weaker = run_deployment(
            "digit-pipeline/retrain",
            parameters={**WHOLE, "lr": 1e-5, "run_name": "weaker"},
            timeout=600,
            poll_interval=2,
        )
        assert weaker.state.is_completed(), server["serve_log"].read_text()[-3000:]
        post = _wait(lambda: hook.find("run weaker rejected"), 120, "the rejected-model alert", server["serve_log"])
        assert "kept the champion" in post["text"] and "nats" in post["text"], post
    finally:
        hook.httpd.shutdown()


def test_serve_keeps_what_prefect_yaml_says(server, tmp_path):
    """`digitgen serve` reads prefect.yaml with Prefect's own loader: an interval schedule, a compound trigger, a
    concurrency limit, a version and a paused flag all reach the server."""
    from datetime import timedelta

    (tmp_path / "prefect.yaml").write_text(PROBE_YAML)
    env = {**os.environ, "PREFECT_API_URL": f"{server['url']}/api", "PREFECT_HOME": str(server["tmp"] / "home")}
    proc = _start(
        [str(BIN / "digitgen"), "serve", "--prefect-file", str(tmp_path / "prefect.yaml")],
        env,
        tmp_path / "serve.log",
        cwd=ROOT,
    )
    try:
        with _client() as c:

            def probe():
                try:
                    return c.read_deployment_by_name("check-data/probe")
                except Exception:
                    return None

            found = _wait(probe, 120, "the probe deployment", tmp_path / "serve.log")
            # serve creates the deployment's triggers just after the deployment itself: wait for them too
            automations = _wait(
                lambda: [a for a in c.read_automations() if a.name.startswith("probe__")],
                30,
                "the probe deployment's automation",
                tmp_path / "serve.log",
            )
    finally:
        _stop(proc)
    assert found.version == "7" and found.paused
    assert [s.schedule.interval for s in found.schedules] == [timedelta(seconds=5400)]
    assert [s.active for s in found.schedules] == [False]
    assert found.global_concurrency_limit.limit == 2
    assert found.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert len(automations) == 1 and automations[0].trigger.type == "compound"
    assert {t.expect.pop() for t in automations[0].trigger.triggers} == {
        "digitgen.probe.first",
        "digitgen.probe.second",
    }
