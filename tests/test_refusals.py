"""Bad input and failing surroundings stop a run with one clear line and harm nothing: a dead server, wrong data, a
NaN loss, a full disk, a read-only data root, a damaged champion record, a failure after the gate."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from cli_runs import ROOT, _candidate, _cli, _settings
from conftest import champion_of, copy_archives


def test_unreachable_server_fails_at_once_with_what_to_do(tmp_path, data_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    args, env = _cli(
        _settings(data_root, tmp_path / "out", "nope", epochs=1), {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    )
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "not reachable" in done.stderr and "make server" in done.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out" / "nope").exists()


def test_wrong_data_stops_the_flow_before_training(prefect_harness, tmp_path, data_root):
    """Labels out of range in the files extracted from the archives: validation fails, no model is trained."""
    from flows.pipeline import digit_pipeline

    root = copy_archives(data_root, tmp_path / "data")
    labels = root / "mnist" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8:28] = bytes([11] * 20)  # after the 8-byte header: 20 labels of 11
    labels.write_bytes(bytes(raw))
    state = digit_pipeline.with_options(retries=0)(
        epochs=1,
        train_limit=1000,
        test_limit=500,
        data_root=root,
        out=tmp_path / "out",
        run_name="bad-data",
        device="cpu",
        progress=False,
        return_state=True,
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert "no model was trained" in str(error) and "label" in str(error)
    folder = tmp_path / "out" / "bad-data"
    assert not (folder / "vae.pt").exists() and not (folder / "checkpoints").exists()
    assert champion_of(tmp_path / "out") is None


def test_nan_loss_stops_training_and_promotes_nothing(prefect_harness, tmp_path, data_root, monkeypatch):
    import torch

    import models.nets
    from flows.pipeline import digit_pipeline

    real = models.nets.bce_nats

    def poisoned(*args, **kwargs):  # the VAE's reconstruction term goes NaN
        return real(*args, **kwargs) * torch.tensor(float("nan"))

    monkeypatch.setattr(models.nets, "bce_nats", poisoned)
    state = digit_pipeline.with_options(retries=0)(
        epochs=2,
        train_limit=1000,
        test_limit=500,
        data_root=data_root,
        out=tmp_path,
        run_name="nan",
        device="cpu",
        progress=False,
        return_state=True,
    )
    assert state.is_failed()
    error = str(state.result(raise_on_failure=False))
    assert "epoch 1" in error and "--lr" in error
    assert champion_of(tmp_path) is None and not (tmp_path / "nan" / "report.md").exists()
    assert not (tmp_path / "nan" / "vae.pt").exists()


def test_a_failure_after_the_gate_promotes_nothing(prefect_harness, tmp_path, fresh_root, monkeypatch):
    """Disk full while the report is written: the run fails, the alias `champion` stays, no version is registered,
    no promotion event."""
    from conftest import CANDIDATE
    from prefect import task

    import flows.pipeline as pipeline
    import tasks.promote as promote

    params = {**CANDIDATE, "data_root": fresh_root, "out": tmp_path}
    from digitgen.registry.tracking import Store, store_uri

    pipeline.digit_pipeline(run_name="champ", **params)
    store = Store(store_uri(tmp_path, None), tmp_path)
    store.client.set_model_version_tag("digitgen-mnist", "1", "digitgen.value", "1e9")  # any challenger beats it
    events = []
    monkeypatch.setattr(promote, "emit_event", lambda **kw: events.append(kw["event"]))

    @task
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "challenger" / "report.md"))

    monkeypatch.setattr(pipeline, "write_report", disk_full)
    state = pipeline.digit_pipeline.with_options(retries=0)(
        run_name="challenger", return_state=True, **{**params, "latent_dim": 4}
    )  # no replicate: it would win
    assert state.is_failed()
    assert champion_of(tmp_path)["run_name"] == "champ", "a failed run never becomes champion"
    assert len(store.client.search_model_versions("name = 'digitgen-mnist'")) == 1
    assert "digitgen.model.promoted" not in events and "digitgen.model.rejected" not in events


def test_disk_full_fails_the_run_naming_the_file_and_promotes_nothing(tmp_path, fresh_root, shared_server):
    """--out on a small tmpfs: the second run (through the CLI, as a user's) fills it; it fails in one line and the
    champion stays."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): disk-full is not simulated")
    try:
        from conftest import CANDIDATE

        from flows.pipeline import digit_pipeline

        digit_pipeline(**CANDIDATE, data_root=fresh_root, out=mount, run_name="first")  # the champion: in-process
        champion = champion_of(mount)["version"]
        used = sum(p.stat().st_size for p in (mount / "first").rglob("*") if p.is_file())
        free = shutil.disk_usage(mount).free
        (mount / "ballast").write_bytes(b"\0" * max(free - used + 400_000, 0))  # room for all but the last files
        args, env = _cli(_candidate(fresh_root, mount, "second", latent_dim=4), shared_server)
        done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0
        assert "No space left on device while writing" in done.stderr and str(mount / "second") in done.stderr
        assert champion_of(mount)["version"] == champion, "a failed run never becomes champion"
        assert not list((mount / "second").rglob("*.tmp")), "no half-written file is left"
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("holding_data", [False, True])
def test_a_read_only_data_root_is_refused_before_anything_runs(tmp_path, data_root, holding_data):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): a read-only data root is not simulated")
    try:
        if holding_data:
            copy_archives(data_root, mount)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        args, env = _cli(["run", "--data-root", str(mount), "--out", str(tmp_path / "out"), "--device", "cpu"])
        started = time.monotonic()
        done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and time.monotonic() - started < 30
        assert "--data-root" in done.stderr and str(mount) in done.stderr and "nothing was run" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("content", [b"\x89\xffrandom", b"[]", b"{}"])
def test_a_damaged_champion_record_fails_the_run_before_training(prefect_harness, tmp_path, data_root, content):
    """In-process: the subject is the record, not the CLI (its one-line report of a failed run: the disk-full test)."""
    from flows.pipeline import digit_pipeline

    out = tmp_path / "out"
    out.mkdir()
    (out / "champion.json").write_bytes(content)
    state = digit_pipeline.with_options(retries=0)(
        epochs=1,
        train_limit=1000,
        test_limit=500,
        data_root=data_root,
        out=out,
        run_name="after-damage",
        device="cpu",
        progress=False,
        return_state=True,
    )
    assert state.is_failed()
    error = str(state.result(raise_on_failure=False))
    assert "champion record" in error and str(out / "champion.json") in error
    assert not list(out.glob("after-damage/checkpoints/*.pt")), "refused before any training"
