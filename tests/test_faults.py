"""Bad input and faults: each test injects one and checks the error a user sees and that nothing is lost."""

from __future__ import annotations

import gzip
import json
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import copy_archives, no_partial_files

from digitgen.data.datasets import get_dataset
from digitgen.data.loading import DataSourceError
from digitgen.data.loading import stage_source as _stage
from digitgen.io import atomic_path, write_json
from models.checkpoint import save_checkpoint

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
MNIST = get_dataset("mnist")
MNIST_FILES = MNIST.files


def stage_source(source, root):
    return _stage(source, root, MNIST)


# --- the data source -------------------------------------------------------------------------------------------


def test_missing_source_folder(tmp_path):
    with pytest.raises(DataSourceError, match=r"not a folder.*DIGITGEN_DATA_SOURCE"):
        stage_source(tmp_path / "nowhere", tmp_path / "root")


def test_missing_file_is_named(tmp_path, source_copy):
    (source_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataSourceError, match=r"has no t10k-labels-idx1-ubyte\.gz"):
        stage_source(source_copy, tmp_path / "root")


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "other gzip"])
def test_corrupt_file_is_named_and_never_half_copied(tmp_path, source_copy, damage):
    path = source_copy / TRAIN_IMAGES
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "not gzip":
        path.write_bytes(b"<html>503 Service Unavailable</html>")
    else:
        path.write_bytes(gzip.compress(b"\0" * 1000))
    root = tmp_path / "root"
    with pytest.raises(DataSourceError) as err:
        stage_source(source_copy, root)
    message = str(err.value)
    assert TRAIN_IMAGES in message and MNIST_FILES[TRAIN_IMAGES] in message and "Replace it" in message
    raw = root / "mnist" / "raw"
    assert not (raw / TRAIN_IMAGES).exists(), "a bad file must not land in the data root"
    assert no_partial_files(root)


def test_a_data_root_holding_the_verified_archives_needs_no_source(tmp_path, data_root):
    """Archives already in the data root with their official md5s are used as they are: an empty source is not
    consulted (nor a missing one)."""
    from digitgen.data.loading import check_source

    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "nowhere"):
        check_source(source, data_root, MNIST)
        assert _stage(source, data_root, MNIST) == data_root / "mnist" / "raw"


def test_source_is_only_read(tmp_path, source_copy):
    before = {p.name: p.stat().st_mtime_ns for p in source_copy.iterdir()}
    stage_source(source_copy, tmp_path / "root")
    assert {p.name: p.stat().st_mtime_ns for p in source_copy.iterdir()} == before


def test_download_failure_says_to_use_the_offline_source(tmp_path, monkeypatch):
    import tasks.ingest as ingest

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(ingest, "load_dataset", offline)
    with pytest.raises(ingest.DownloadError, match="URLError.*name resolution.*DIGITGEN_DATA_SOURCE"):
        ingest.download_data.fn("mnist", tmp_path / "root", None)
    # retried with growing back-off, but not when the offline source itself is bad
    assert ingest.download_data.retries == 3
    delays = ingest.download_data.retry_delay_seconds
    assert list(delays) == sorted(delays) and delays[0] < delays[-1]

    class _State:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=False):
            return self.exc

    assert ingest._retry_network_errors(None, None, _State(ingest.DownloadError("x")))
    assert not ingest._retry_network_errors(None, None, _State(DataSourceError("x")))
    assert not ingest._retry_network_errors(None, None, _State(ingest.LocalDataError("disk full")))


# --- settings ----------------------------------------------------------------------------------------------------


def test_flow_parameters_are_validated_before_any_work(tmp_path, data_root):
    from pydantic import ValidationError

    from flows.pipeline import digit_pipeline

    with pytest.raises(ValidationError, match="epochs"):
        digit_pipeline.fn(epochs=0, out=tmp_path / "out", data_root=data_root)
    with pytest.raises(ValidationError, match="latent_dim"):
        digit_pipeline.fn(latent_dim=0, out=tmp_path / "out", data_root=data_root)
    assert not (tmp_path / "out").exists()


def test_prefect_yaml_parameters_are_checked():
    from digitgen.serve import check_parameters, load_deployment_specs

    specs = load_deployment_specs()
    check_parameters(specs)  # the shipped file is valid
    bad = [{**specs[0], "parameters": {"epochs": -3}}]
    with pytest.raises(ValueError, match=r"(?s)'nightly'.*epochs"):
        check_parameters(bad)


# --- atomic writes -----------------------------------------------------------------------------------------------


def test_a_crash_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    with pytest.raises(TypeError):
        write_json(target, {"new": object()})  # fails half-way through serialising
    assert json.loads(target.read_text()) == {"old": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"old": 1}
    assert no_partial_files(tmp_path)


def test_a_crash_while_saving_a_checkpoint_leaves_the_old_one(tmp_path, monkeypatch):
    from models import VAE, load_checkpoint

    path = tmp_path / "vae.pt"
    model = VAE(4, (8,))
    save_checkpoint(path, {"arch": model.arch(), "model": model.state_dict()})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"arch": model.arch(), "model": model.state_dict()})
    monkeypatch.setattr(torch, "save", real_save)
    assert isinstance(load_checkpoint(path), VAE)
    assert no_partial_files(tmp_path)


def test_a_data_root_never_holds_two_names_that_differ_only_in_case(tmp_path, data_source):
    """The archives live in the dataset's own folder (`mnist/raw/`), not torchvision's `MNIST/raw/` beside `mnist/`
    (one folder on a file system blind to case); a data root laid out the old way is moved over, not copied again."""
    from digitgen.data.loading import dataset_fingerprint, load_dataset

    root = tmp_path / "data"
    _stage(data_source, root, MNIST)
    load_dataset(root, MNIST, download=True)  # extracts the staged archives; no network
    names = [p.relative_to(root).as_posix().lower() for p in root.rglob("*")]
    assert len(names) == len(set(names)) and (root / "mnist" / "raw" / "train-images-idx3-ubyte").is_file()
    assert not (root / "MNIST").exists() or (root / "MNIST").samefile(root / "mnist")  # one folder: blind to case
    fingerprint = dataset_fingerprint(root, MNIST)
    old = tmp_path / "old"
    (old / "MNIST").mkdir(parents=True)
    (root / "mnist" / "raw").rename(old / "MNIST" / "raw")  # as an earlier digitgen left it
    inode = (old / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").stat().st_ino
    assert _stage(tmp_path / "nowhere", old, MNIST) == old / "mnist" / "raw", "no source needed: the files are there"
    assert (old / "mnist" / "raw" / "train-images-idx3-ubyte.gz").stat().st_ino == inode
    assert not (old / "MNIST").exists() or (old / "MNIST").samefile(old / "mnist")
    assert dataset_fingerprint(old, MNIST) == fingerprint and len(load_dataset(old, MNIST).train_labels) == 60_000


def test_the_data_fingerprint_reads_each_file_once_and_sees_every_change(tmp_path, data_root, monkeypatch):
    """A run fingerprints its data three times: the files are read once while they stay as they were, and a file
    rewritten in place (the same size, its old modification time put back) gives a new fingerprint."""
    import os

    from digitgen.data import loading

    root = copy_archives(data_root, tmp_path / "data")
    reads, real = [], loading.md5sum
    monkeypatch.setattr(loading, "md5sum", lambda path: reads.append(path) or real(path))
    first = loading.dataset_fingerprint(root, MNIST)
    assert len(reads) == 8, reads  # the four archives and the four files extracted from them
    assert loading.dataset_fingerprint(root, MNIST) == first and len(reads) == 8, "read once"
    labels = root / "mnist" / "raw" / "t10k-labels-idx1-ubyte"
    before = labels.stat()
    content = bytearray(labels.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # another label for the last test image
    labels.write_bytes(bytes(content))
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert labels.stat().st_size == before.st_size and labels.stat().st_mtime_ns == before.st_mtime_ns
    assert loading.dataset_fingerprint(root, MNIST) != first


def test_an_old_data_root_that_cannot_be_moved_over_says_how_to_move_it(tmp_path, data_source, monkeypatch):
    """torchvision's MNIST/raw on another disk (a link) cannot be renamed: one error naming both folders and the
    command, never a traceback or a download retry."""
    import errno

    root = tmp_path / "data"
    (root / "MNIST").mkdir(parents=True)
    (root / "MNIST" / "raw").mkdir()

    def cross_device(self, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(Path, "rename", cross_device)
    with pytest.raises(
        DataSourceError, match="cannot be moved to .*Invalid cross-device link.*: move them there \\(mv "
    ):
        _stage(data_source, root, MNIST)
