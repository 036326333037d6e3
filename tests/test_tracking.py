"""Runs in MLflow, end to end: a pipeline run tracked in full, against the embedded SQLite store and a team's
PostgreSQL-backed `mlflow server`; generation from the registry anywhere; a tracking server that is down at the start
or during the gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CANDIDATE, champion_of, copy_root

from digitgen.registry import tracking

ROOT = Path(__file__).resolve().parents[1]
TINY = {**CANDIDATE, "epochs": 2}  # all the data: a candidate for champion


def _cli(*args, env=None, cwd=ROOT):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "digitgen.cli", *map(str, args)],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module", params=["sqlite", "server"])
def tracked(request, prefect_harness, tmp_path_factory, judged_root):
    """One tiny pipeline run tracked in the store of the parameter, made once for the tests that read it: (run
    folder, store)."""
    from flows.pipeline import digit_pipeline

    uri = request.getfixturevalue("mlflow_team") if request.param == "server" else None
    tmp = tmp_path_factory.mktemp(f"tracked-{request.param}")
    out = tmp / "out"
    folder = Path(
        digit_pipeline(
            **TINY,
            data_root=copy_root(judged_root, tmp / "data"),
            out=out,
            run_name=f"tracked-{request.param}",
            tracking_uri=uri,
        )
    )
    return folder, tracking.Store(tracking.store_uri(out, uri), out)


def test_a_run_is_tracked_in_full(tracked):
    folder, store = tracked
    record = json.loads((folder / "mlflow.json").read_text())
    run = store.client.get_run(record["run_id"])
    experiment = store.client.get_experiment(run.info.experiment_id)
    assert experiment.name == "digitgen-mnist" and run.info.run_name == folder.name and run.info.status == "FINISHED"
    config = json.loads((folder / "config.json").read_text())
    assert set(config) <= set(run.data.params), "every setting is a param"
    assert run.data.params["epochs"] == "2" and run.data.params["hidden"] == "[64]"
    history = store.client.get_metric_history(run.info.run_id, "vae.test_loss")
    assert [m.step for m in history] == [1, 2] and [
        m.step for m in store.client.get_metric_history(run.info.run_id, "ae.train_loss")
    ] == [1, 2]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert run.data.metrics["vae.test_nll_is_nats"] == metrics["vae"]["test_nll_is_nats"]
    assert run.data.metrics["vae.samplers.gmm.inception_score"] == metrics["vae"]["samplers"]["gmm"]["inception_score"]
    assert run.data.metrics["ae.test_recon_nats"] == metrics["ae"]["test_recon_nats"]
    tags = run.data.tags
    assert tags["digitgen.data_version"] == metrics["data_version"]
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags["prefect.flow_run_id"] and tags["prefect.flow_run_url"].endswith(tags["prefect.flow_run_id"])
    files = {a.path for a in store.client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "config.json", "samples_vae.png", "model"} <= files, files
    model = {a.path for a in store.client.list_artifacts(run.info.run_id, "model")}
    assert model == {"model/vae.pt", "model/ae.pt", "model/samplers.pt", "model/config.json", "model/vae-test-nll.pt"}
    assert f"runs/{run.info.run_id}" in (folder / "report.md").read_text(), "the report links to the MLflow run"
    # promoted: version 1 of digitgen-mnist, made of the project's own checkpoint files (no pickled code to load)
    version = store.client.get_model_version_by_alias("digitgen-mnist", "champion")
    assert version.run_id == run.info.run_id and tags["digitgen.registry.gate.decision"] == "promoted"
    if store.uri.startswith("sqlite"):
        assert store.uri == f"sqlite:///{folder.parent.resolve() / 'mlflow.db'}"
        assert list((folder.parent / "mlartifacts").rglob("model/vae.pt")), "artifacts under <out>/mlartifacts/"


def test_generate_champion_reads_the_registry_from_any_folder_and_home(tracked, tmp_path):
    """`digitgen generate champion` with nothing but the tracking URI (or, for the embedded store, --runs): another
    working folder, another HOME, no run folder in reach."""
    folder, store = tracked
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"HOME": str(elsewhere), "PREFECT_HOME": str(elsewhere / ".prefect")}
    args = ["generate", "champion", "--n", 16, "--digit", 4, "--out", elsewhere / "fours.png"]
    if store.uri.startswith("http"):
        env["MLFLOW_TRACKING_URI"] = store.uri
        args += ["--runs", elsewhere / "runs"]  # the store is the server's: this folder has none
    else:
        args += ["--runs", folder.parent]
    done = _cli(*args, env=env, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (elsewhere / "fours.png").read_bytes()[:4] == b"\x89PNG"
    from models.checkpoint import load_checkpoint

    files = store.download_version(
        "digitgen-mnist",
        champion_of(folder.parent, tracking_uri=(store.uri if store.uri.startswith("http") else None))["version"],
        tmp_path / "dl",
    )
    assert sorted(p.name for p in files.iterdir()) == [
        "ae.pt",
        "config.json",
        "samplers.pt",
        "vae-test-nll.pt",
        "vae.pt",
    ]
    assert load_checkpoint(files / "vae.pt").__class__.__name__ == "VAE"  # weights only: models.load_checkpoint


def test_a_tracking_server_down_at_the_start_fails_in_one_line_before_training(tmp_path, data_root):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    done = _cli(
        "run",
        "--epochs",
        1,
        "--train-limit",
        1000,
        "--test-limit",
        500,
        "--data-root",
        data_root,
        "--out",
        tmp_path / "out",
        "--run-name",
        "nope",
        "--device",
        "cpu",
        "--no-progress",
        env={"MLFLOW_TRACKING_URI": dead},
    )
    assert done.returncode != 0 and time.monotonic() - started < 90
    last = done.stderr.strip().splitlines()[-1]
    assert f"the MLflow tracking server {dead} is not reachable" in last and "Traceback" not in done.stderr
    assert not list((tmp_path / "out").rglob("*.pt")), "nothing was trained"


def test_a_tracking_server_down_during_the_gate_leaves_the_alias_and_promote_finishes_the_job(
    prefect_harness, tmp_path, judged_root, mlflow_team, monkeypatch
):
    """The server goes down as the run reaches its gate: the run fails clearly, the alias `champion` still names the
    first run, the run folder is complete; with the server back, `digitgen promote RUN` logs the run and decides.
    The team's server is reached through a switch that takes it down for these runs only; binarized MNIST, whose
    registered model (digitgen-mnist-binarized) no other test on that server touches."""
    from urllib.parse import urlparse

    from mlflow_server import Switch

    import tasks.promote as promote
    from flows.pipeline import digit_pipeline

    team = urlparse(mlflow_team)
    switch = Switch((team.hostname, team.port)).on()
    url, name = switch.url, "digitgen-mnist-binarized"
    settings = {  # all the data: candidates
        **CANDIDATE,
        "binarize": "dynamic",
        "data_root": copy_root(judged_root, tmp_path / "data"),
        "out": tmp_path / "out",
    }
    digit_pipeline(**settings, run_name="first", tracking_uri=url)
    real = promote.log_results

    def server_goes_down(*args, **kwargs):
        switch.off()
        return real(*args, **kwargs)

    monkeypatch.setattr(promote, "log_results", server_goes_down)
    state = digit_pipeline.with_options(retries=0)(
        **settings, run_name="second", seed=1, tracking_uri=url, return_state=True
    )
    assert state.is_failed()
    assert "not reachable" in str(state.result(raise_on_failure=False))
    folder = tmp_path / "out" / "second"
    assert all((folder / f).is_file() for f in ("report.md", "metrics.json", "vae.pt", "ae.pt", "samplers.pt"))
    switch.on()
    assert champion_of(tmp_path / "out", "mnist", "dynamic", tracking_uri=url)["run_name"] == "first", "alias unmoved"
    done = _cli("promote", folder, env={"MLFLOW_TRACKING_URI": url})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("second: ")
    store = tracking.Store(url, tmp_path / "out")
    run = store.client.get_run(json.loads((folder / "mlflow.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["digitgen.registry.gate.decision"] in (
        "promoted",
        "rejected",
    )
    assert "vae.test_nll_is_nats" in run.data.metrics
    again = _cli("promote", folder, env={"MLFLOW_TRACKING_URI": url})  # run twice: nothing doubles
    assert again.returncode == 0
    assert len(store.client.search_model_versions(f"name = '{name}'")) <= 2
    switch.off()
