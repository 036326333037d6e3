"""New data in batches: checked before it is used, added as immutable versions, trained on by version.

Every batch is built from real images: MNIST with new handwriting (rotated, shifted), Fashion-MNIST under digit
labels, MNIST with wrong labels, a truncated PNG, inverted images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from batch_factory import accepted_batch, new_handwriting, pick, write_batch
from cli_runs import _digitgen

from digitgen.data.datasets import get_dataset
from digitgen.data.versions import list_versions

MNIST = get_dataset("mnist")


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def batches(tmp_path_factory, mnist, fashion) -> dict[str, Path]:
    """One folder per kind of batch, 200 images each."""
    base = tmp_path_factory.mktemp("batches")
    out = {"good": accepted_batch(base / "good", mnist)}
    images, labels = pick(mnist.train_images, mnist.train_labels, 200, seed=2)
    out["wrong-labels"] = write_batch(base / "wrong-labels", new_handwriting(images, seed=2), (labels + 3) % 10)
    out["inverted"] = write_batch(base / "inverted", 255 - new_handwriting(images, seed=2), labels)
    out["truncated"] = write_batch(base / "truncated", new_handwriting(images, seed=2), labels)
    victim = sorted(out["truncated"].rglob("*.png"))[7]
    victim.write_bytes(victim.read_bytes()[:60])
    out["truncated-file"] = victim.relative_to(out["truncated"])
    images, labels = pick(fashion.train_images, fashion.train_labels, 200, seed=3)
    out["fashion"] = write_batch(base / "fashion", images, labels)
    return out


# --- the checks themselves ---------------------------------------------------------------------------------------


def test_psi_is_zero_for_the_same_distribution_and_large_for_another():
    from digitgen.data.batches import psi, psi_limit

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(50_000, generator=g)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert psi(ref, torch.rand(5000, generator=g)) < 0.01
    assert psi(ref, torch.rand(5000, generator=g) * 0.5) > 1.0  # half of the deciles empty
    assert psi_limit(20) > psi_limit(200) > psi_limit(20_000) > 0.25  # small batches get room for their noise


def test_reading_a_batch_names_the_bad_files(batches):
    from digitgen.data.batches import read_batch

    batch = read_batch(batches["truncated"], MNIST)
    bad = batch.table[batch.table["error"].notna()]
    assert list(bad["file"]) == [batches["truncated-file"].as_posix()]
    assert len(batch.labels) == len(batch.table) - 1 and batch.images.shape[1:] == (28, 28)


# --- ingest through the command line ----------------------------------------------------------------------------


def test_good_batch_becomes_a_version_and_a_refused_one_is_quarantined(fresh_root, batches, shared_server):
    root = fresh_root
    before = {k: _tree_digest(batches[k]) for k in ("good", "fashion")}
    ingest = ["--data-root", str(root), "--device", "cpu", "--no-progress"]

    done = _digitgen("ingest", str(batches["good"]), *ingest, env=shared_server, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    version = done.stdout.strip().splitlines()[-1]
    versions = list_versions(root, MNIST)
    assert [v["id"] for v in versions][-1] == version and len(versions) == 2
    assert versions[-1]["n_train"] == 60_200 and versions[-1]["batches"][0]["name"] == "good"
    listed = _digitgen("versions", "--data-root", str(root))
    assert listed.returncode == 0 and version in listed.stdout and "60,200" in listed.stdout
    assert listed.stdout.index(versions[0]["id"]) < listed.stdout.index(version), "base first, newest last"

    refused = _digitgen("ingest", str(batches["fashion"]), *ingest, env=shared_server, timeout=300)
    assert refused.returncode != 0
    message = refused.stderr
    assert "batch fashion refused" in message and "judge_agrees" in message and "observed" in message
    quarantined = root / "mnist" / "quarantine" / "fashion"
    assert (quarantined / "validation.json").is_file()
    record = json.loads((quarantined / "validation.json").read_text())
    assert not record["accepted"] and any("judge_agrees" in line for line in record["failures"])
    assert len(list(quarantined.rglob("*.png"))) == 200
    assert [v["id"] for v in list_versions(root, MNIST)][-1] == version, "a refused batch changes no version"
    assert {k: _tree_digest(batches[k]) for k in ("good", "fashion")} == before, "sources are never modified"


@pytest.mark.parametrize(
    "kind, expectation",
    [("wrong-labels", "judge_agrees"), ("inverted", "inverted"), ("truncated", "error")],
)
def test_bad_batches_are_refused_naming_what_failed(prefect_harness, fresh_root, batches, kind, expectation):
    from flows.ingest import ingest_batch
    from tasks.batches import BatchRefusedError

    root = fresh_root
    with pytest.raises(BatchRefusedError) as err:
        ingest_batch(batches[kind], data_root=root, device="cpu", progress=False)
    message = str(err.value)
    assert f"column={expectation}" in message and "quarantined" in message
    if kind == "truncated":
        assert batches["truncated-file"].as_posix() in message, "the unreadable file is named"
    assert len(list_versions(root, MNIST)) == 1
    assert (root / "mnist" / "quarantine" / kind / "validation.json").is_file()


def test_duplicates_of_dataset_images_are_refused(prefect_harness, tmp_path, fresh_root, mnist):
    from flows.ingest import ingest_batch
    from tasks.batches import BatchRefusedError

    root = fresh_root
    images, labels = pick(mnist.train_images, mnist.train_labels, 50, seed=4)
    batch = write_batch(tmp_path / "copies", images, labels)  # exact copies of training images
    with pytest.raises(BatchRefusedError, match="column=seen_before") as refused:
        ingest_batch(batch, data_root=root, device="cpu", progress=False)
    first = str(refused.value).splitlines()[1]  # plain words first, the expectations as detail after
    assert first == "  - 50 of 50 images are exact copies of MNIST images already in the dataset.", str(refused.value)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-ingest"])))
    mine = [a for a in found if "Batch `copies`" in a.data]
    assert mine, "ingest publishes the data-ingest artifact"
    assert "REFUSED" in mine[0].data and "seen_before" in mine[0].data and "data:image/png;base64," in mine[0].data


# --- training on a version ---------------------------------------------------------------------------------------


def test_run_trains_on_the_version_it_names(prefect_harness, tmp_path, fresh_root, batches):
    from conftest import CANDIDATE, champion_of

    from flows.ingest import ingest_batch
    from flows.pipeline import digit_pipeline

    root = fresh_root
    base = list_versions(root, MNIST)[0]["id"]
    new = ingest_batch(batches["good"], data_root=root, device="cpu", progress=False)["id"]
    tiny = {
        "epochs": 1,
        "train_limit": 1000,
        "test_limit": 500,
        "is_samples": 5,
        "quality_samples": 500,
        "data_root": root,
        "out": tmp_path / "out",
        "device": "cpu",
        "progress": False,
    }
    newest = Path(digit_pipeline(run_name="newest", **{**CANDIDATE, "data_root": root, "out": tmp_path / "out"}))
    old = Path(digit_pipeline(run_name="old", data_version=base, **tiny))
    m_new, m_old = (json.loads((f / "metrics.json").read_text()) for f in (newest, old))
    assert m_new["data_version"] == new and m_new["n_train"] == 60_200, "the newest version by default, batch included"
    assert m_old["data_version"] == base and m_old["n_train"] == 1000
    assert json.loads((newest / "config.json").read_text())["data_version"] == new
    report = (newest / "report.md").read_text()
    assert new in report and "200 images added: good" in report
    champion = champion_of(tmp_path / "out")  # the registry records the version its champion trained on
    assert champion["run_name"] == "newest" and champion["data_version"] == new  # "old", a trial, is no candidate


def test_unknown_version_is_refused_before_training(tmp_path, judged_root):
    done = _digitgen(
        "run",
        "--data-root",
        str(judged_root),
        "--data-version",
        "v9-0123456789",
        "--out",
        str(tmp_path / "out"),
        "--epochs",
        "1",
        "--train-limit",
        "500",
        "--device",
        "cpu",
    )
    assert done.returncode != 0
    assert "no data version 'v9-0123456789'" in done.stderr and "digitgen versions" in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "no run folder is left"


def test_check_data_ingests_each_inbox_batch_once_and_sets_aside_failures(
    prefect_harness, fresh_root, batches, monkeypatch
):
    """Every dataset's inbox is read; accepted and refused batches leave it; a batch whose ingest crashes for
    another reason is set aside (not retried for ever) and the check-data run fails, naming it."""
    import shutil

    import tasks.batches as tb
    from flows.check_data import IngestFailedError, check_data

    inbox = fresh_root / "mnist" / "incoming"
    inbox.mkdir(parents=True)
    for kind in ("good", "wrong-labels"):
        shutil.copytree(batches[kind], inbox / kind)
    shutil.copytree(batches["good"], inbox / ".still-copying")
    result = check_data(data_root=fresh_root)
    assert result["batches"]["mnist/good"].startswith("v1-") and result["batches"]["mnist/wrong-labels"] == "refused"
    assert sorted(p.name for p in inbox.iterdir()) == [".still-copying"]
    assert (fresh_root / "mnist" / "accepted" / "good").is_dir()
    assert (fresh_root / "mnist" / "quarantine" / "wrong-labels" / "validation.json").is_file()
    assert check_data(data_root=fresh_root)["batches"] == {}, "nothing is ingested twice"

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    shutil.copytree(batches["inverted"], inbox / "unlucky")
    monkeypatch.setattr(tb, "read_batch", broken)
    with pytest.raises(IngestFailedError, match="unlucky"):
        check_data(data_root=fresh_root)
    record = json.loads((fresh_root / "mnist" / "quarantine" / "unlucky" / "validation.json").read_text())
    assert "No space left on device" in record["failures"][0]
    assert not (inbox / "unlucky").exists()
