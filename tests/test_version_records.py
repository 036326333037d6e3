"""Data versions that check themselves: an ingest killed at the worst moments of its commit leaves the previous
version and the next ingest succeeds; a changed batch file and a manifest edited by hand are refused by name, and
`digitgen versions` lists the sound versions beside the damaged ones."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from batch_factory import accepted_batch, new_handwriting, pick
from cli_runs import ROOT, _digitgen

from digitgen.data.datasets import get_dataset
from digitgen.data.versions import get_version, list_versions, version_train_set

MNIST = get_dataset("mnist")


@pytest.fixture(scope="module")
def good_batch(tmp_path_factory, mnist):
    """200 MNIST images in new handwriting, with their labels: a batch every check accepts."""
    return accepted_batch(tmp_path_factory.mktemp("batches") / "good", mnist)


# --- a crash mid-ingest ------------------------------------------------------------------------------------------


CRASH = """
import os, sys
from pathlib import Path
import torch
import digitgen.data.versions as versions
from digitgen.data.batches import read_batch
from digitgen.data.datasets import get_dataset

root, folder, where = sys.argv[1:]
real_save, real_write = torch.save, versions.write_json

def save(obj, path):  # half the batch file written, then death
    real_save(obj, path)
    Path(path).write_bytes(Path(path).read_bytes()[:1000])
    os._exit(9)

def write(path, obj):  # the batch file complete, the new manifest not yet written
    if Path(path).parent.name == "versions" and obj.get("batches"):
        os._exit(9)
    real_write(path, obj)

if where == "batch file":
    torch.save = save  # digitgen.data.versions imports torch where it saves
elif where == "manifest":
    versions.write_json = write
spec = get_dataset("mnist")
batch = read_batch(folder, spec)
versions.add_batch(root, spec, "good", batch.images, batch.labels, batch.checksum)
os._exit(9)  # "after commit": the version is written, the ingest never finished (no event, no report)
"""


@pytest.mark.parametrize("where", ["batch file", "manifest", "after commit"])
def test_a_crash_mid_ingest_leaves_the_previous_version_and_the_next_ingest_succeeds(
    prefect_harness, fresh_root, good_batch, mnist, where
):
    """The ingest process dies (as under kill -9) at the worst moments of its commit."""
    from flows.ingest import ingest_batch

    root = fresh_root
    base = list_versions(root, MNIST)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, str(root), str(good_batch), where],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    if where == "after commit":
        assert len(list_versions(root, MNIST)) == 2
        committed = list_versions(root, MNIST)[-1]
        again = ingest_batch(good_batch, data_root=root, device="cpu", progress=False)
        assert again["id"] == committed["id"] and len(list_versions(root, MNIST)) == 2, "finished, not refused"
        return
    assert list_versions(root, MNIST) == base, "no half-added version"
    images, labels = version_train_set(
        root, MNIST, get_version(root, MNIST, None), mnist.train_images, mnist.train_labels
    )
    assert len(images) == 60_000 and len(labels) == 60_000
    manifest = ingest_batch(good_batch, data_root=root, device="cpu", progress=False)
    assert manifest["n_train"] == 60_200 and len(list_versions(root, MNIST)) == 2


def test_a_changed_batch_file_is_refused_when_training(tmp_path, mnist):
    from digitgen.data.versions import VersionError, add_batch, load_batch

    images, labels = pick(mnist.train_images, mnist.train_labels, 20, seed=5)
    manifest = add_batch(tmp_path, MNIST, "b", new_handwriting(images), labels, "x")
    entry = manifest["batches"][0]
    path = tmp_path / "mnist" / "batches" / f"{entry['sha256']}.pt"
    state = torch.load(path, weights_only=True)
    state["labels"][0] = (state["labels"][0] + 1) % 10
    torch.save(state, path)
    with pytest.raises(VersionError, match="does not match its checksum"):
        load_batch(tmp_path, MNIST, entry)


def test_a_manifest_edited_by_hand_is_refused_and_versions_lists_the_rest(tmp_path, mnist):
    """A batch dropped from a version's manifest by hand, and a manifest with a key missing: training and ingest
    refuse the chain naming the file (the id is derived again from the content); `digitgen versions` lists the sound
    versions, names each damaged manifest and exits with status 1."""
    from digitgen.data.versions import VersionError, add_batch

    for seed in (5, 6):
        images, labels = pick(mnist.train_images, mnist.train_labels, 20, seed=seed)
        newest = add_batch(tmp_path, MNIST, f"b{seed}", new_handwriting(images, seed=seed), labels, "x")
    folder = tmp_path / "mnist" / "versions"
    edited = folder / f"{newest['id']}.json"
    edited.write_text(json.dumps({**newest, "batches": newest["batches"][1:], "n_train": newest["n_train"] - 20}))
    with pytest.raises(VersionError, match=f"{edited}.*edited by hand"):
        get_version(tmp_path, MNIST, None)
    listed = _digitgen("versions", "--data-root", str(tmp_path))
    assert listed.returncode == 1 and str(edited) in listed.stderr and "edited by hand" in listed.stderr
    assert len(re.findall(r"^v\d+-", listed.stdout, re.M)) == 2, listed.stdout  # the base and the first batch
    edited.write_text(json.dumps({k: v for k, v in newest.items() if k != "batches"}))
    listed = _digitgen("versions", "--data-root", str(tmp_path))
    assert listed.returncode == 1 and "Traceback" not in listed.stderr
    assert f"{edited} is malformed (KeyError" in listed.stderr, listed.stderr
