"""Crashes, restarts and concurrency, with real processes: kill -9 mid-training and resume, a run name used twice, two
runs at once, a failed flow run retried from its last epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runs import NATS, ROOT, TRIAL, _candidate, _cli, _metrics, _settings
from conftest import champion_of


def test_kill_9_mid_training_then_resume_gives_the_uninterrupted_result(tmp_path, data_root, shared_server):
    out = tmp_path / "out"
    args, env = _cli(_settings(data_root, out, "killed"), shared_server)
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    first = out / "killed" / "checkpoints" / "vae-epoch-001.pt"
    deadline = time.monotonic() + 180
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)  # mid-epoch 2 of the VAE
    proc.wait()
    folder = out / "killed"
    assert not (folder / "metrics.json").exists() and not (folder / "report.md").exists()
    assert not (folder / "vae.pt").exists()

    # The resumed run through the CLI, as a user runs it; the uninterrupted reference in this process, which computes
    # on as many threads as the CLI's (bfloat16 kernels may sum in another order with another thread count).
    args, env = _cli(["run", "--resume", str(folder), "--no-progress"], shared_server)
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert Path(resumed.stdout.strip().splitlines()[-1]) == folder.resolve()
    from flows.pipeline import digit_pipeline

    digit_pipeline(**TRIAL, data_root=data_root, out=out, run_name="straight", progress=False)
    a, b = _metrics(folder), _metrics(out / "straight")
    for key in NATS:
        assert a["vae"][key] == pytest.approx(b["vae"][key], abs=1e-6), key
    assert a["ae"]["test_recon_nats"] == pytest.approx(b["ae"]["test_recon_nats"], abs=1e-6)
    assert [h["test_loss"] for h in a["history"]["vae"]] == pytest.approx([h["test_loss"] for h in b["history"]["vae"]])


def test_rerunning_an_interrupted_run_name_resumes_it(prefect_harness, tmp_path, data_root):
    """The same run name picks up an interrupted run; a complete one is refused, never overwritten."""
    from flows.pipeline import digit_pipeline

    params = {
        "epochs": 1,
        "train_limit": 2000,
        "test_limit": 500,
        "is_samples": 5,
        "quality_samples": 500,
        "data_root": data_root,
        "out": tmp_path,
        "run_name": "again",
        "device": "cpu",
        "progress": False,
    }
    folder = Path(digit_pipeline(**params))
    report = (folder / "report.md").read_text()
    (folder / "report.md").unlink()  # as if it had been killed after training
    (folder / "metrics.json").unlink()
    assert Path(digit_pipeline(**params)) == folder
    assert (folder / "metrics.json").is_file()
    state = digit_pipeline.with_options(retries=0)(**params, return_state=True)  # complete now: refused
    assert state.is_failed() and "already exists" in str(state.message) + repr(state.result(raise_on_failure=False))
    assert (folder / "report.md").read_text().splitlines()[0] == report.splitlines()[0]


def test_two_runs_at_once_both_complete_and_two_seeds_never_promote_each_other(tmp_path, fresh_root, shared_server):
    """Two candidates of the same settings but their seeds, at once: both complete in their own folders; whichever
    reaches the gate first becomes champion, and the other, a replicate, is rejected however its NLL compares (the
    gap between seeds is luck), with one registered version. A clearly better run (two epochs) is then promoted."""
    from digitgen.registry.tracking import Store, store_uri

    out = tmp_path / "out"
    procs = []
    for seed in (1, 2):
        # one core each: the subject is two runs sharing a champion record, not two runs fighting over two cores
        one_core = {**shared_server, "OMP_NUM_THREADS": "1"}
        args, env = _cli(_candidate(fresh_root, out, f"seed{seed}", seed=seed), one_core)
        procs.append(
            subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = [p.communicate(timeout=400) for p in procs]
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    folders = [Path(stdout.strip().splitlines()[-1]) for stdout, _ in results]
    assert folders[0] != folders[1] and all((f / "report.md").is_file() for f in folders)
    store = Store(store_uri(out, None), out)
    decisions = store.decisions("mnist", "digitgen-mnist")
    assert [d["promoted"] for d in decisions] == [True, False] and decisions[1]["replicate"], decisions
    first = next(f for f in folders if f.name == decisions[0]["run_name"])
    assert champion_of(out)["run_name"] == first.name
    assert champion_of(out)["value"] == _metrics(first)["vae"]["test_nll_is_nats"]
    assert len(store.client.search_model_versions("name = 'digitgen-mnist'")) == 1

    from conftest import CANDIDATE

    from flows.pipeline import digit_pipeline  # in-process: the subject is the gate now, not the process

    digit_pipeline(**{**CANDIDATE, "epochs": 2}, data_root=fresh_root, out=out, run_name="longer")
    assert champion_of(out)["run_name"] == "longer", "two epochs beat one by more than the margin"
    last = store.decisions("mnist", "digitgen-mnist")[-1]
    assert last["promoted"] and last["difference_nats"] < -last["margin_nats"] and not last["replicate"]


def test_a_second_run_with_the_same_name_refuses_at_once(tmp_path, data_root, shared_server):
    """Two runs started together with one --run-name: the second names the live run and its process, and stops."""
    args, env = _cli(_settings(data_root, tmp_path, "shared", epochs=3), shared_server)
    first = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "shared" / ".lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().startswith("pid")) and time.monotonic() < deadline:
            time.sleep(0.2)
        started = time.monotonic()
        second = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert second.returncode != 0
        assert "in use by a live run" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr[-2000:]
        assert time.monotonic() - started < 60, "refused at once, not after training"
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()


def test_resume_refuses_an_edited_config_and_cleans_stale_temporary_files(prefect_harness, tmp_path, data_root):
    from flows.pipeline import digit_pipeline

    params = {
        "epochs": 2,
        "train_limit": 1000,
        "test_limit": 500,
        "is_samples": 5,
        "quality_samples": 500,
        "batch_size": 128,
        "data_root": data_root,
        "out": tmp_path,
        "device": "cpu",
        "progress": False,
    }
    folder = Path(digit_pipeline(run_name="edited", **params))
    for name in ("report.md", "vae.pt", "ae.pt"):  # as if killed after the first models' last epoch checkpoints
        (folder / name).unlink()
    stale = folder / "checkpoints" / ".vae-epoch-002.pt.x1y2.tmp"
    stale.write_bytes(b"half")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "epochs": 1}))
    state = digit_pipeline.with_options(retries=0)(resume=folder, return_state=True)
    assert state.is_failed() and "config.json was changed" in str(state.result(raise_on_failure=False))
    (folder / "config.json").write_text(json.dumps(config))
    assert digit_pipeline(resume=folder, return_state=True).is_completed()
    assert not stale.exists(), "resume removes the interrupted run's half-written files"


def test_a_failed_flow_run_is_retried_in_its_own_folder_from_its_last_epoch(
    prefect_harness, tmp_path, data_root, monkeypatch
):
    """The flow declares a retry: a run that fails mid-training runs again as the same flow run, in the folder
    named after it, and training continues from the last complete epoch rather than from scratch."""
    import tasks.train
    from flows.pipeline import digit_pipeline

    real, calls = tasks.train.fit, []

    def fails_once_after_epoch_1(*args, **kwargs):
        calls.append((kwargs["resume"] or {}).get("epoch"))
        if len(calls) == 1:
            on_epoch = kwargs["on_epoch"]

            def then_fail(record, state):
                on_epoch(record, state)
                raise RuntimeError("injected: the worker lost its disk for a moment")

            kwargs = {**kwargs, "on_epoch": then_fail}
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.train, "fit", fails_once_after_epoch_1)
    state = digit_pipeline.with_options(retry_delay_seconds=0)(
        epochs=2,
        train_limit=1000,
        test_limit=500,
        is_samples=5,
        quality_samples=500,
        batch_size=128,
        data_root=data_root,
        out=tmp_path,
        device="cpu",
        progress=False,
        return_state=True,
    )
    assert state.is_completed(), state
    folder = Path(state.result())
    assert calls[:2] == [None, 1], calls  # the retry's VAE resumed after epoch 1
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        run = c.read_flow_run(state.state_details.flow_run_id)
    assert run.run_count == 2 and folder.name == f"{run.name}-{str(run.id)[:8]}"
    assert [r["epoch"] for r in _metrics(folder)["history"]["vae"]] == [1, 2]
