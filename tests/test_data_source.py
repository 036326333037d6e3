"""Where the data comes from: a data source that is missing or cannot give the archives fails in one line before
any server starts, and the archives' md5s are torchvision's official ones."""

import pytest
from cli_runs import _digitgen


def test_a_data_source_from_the_environment_that_does_not_exist_fails_in_one_line(tmp_path):
    out = tmp_path / "out"
    done = _digitgen("run", "--out", str(out), env={"DIGITGEN_DATA_SOURCE": str(tmp_path / "nowhere")})
    assert done.returncode != 0
    assert "DIGITGEN_DATA_SOURCE" in done.stderr and "nothing was run" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 3
    assert not out.exists() or not any(out.iterdir())


def test_no_data_no_source_and_no_network_fails_fast_leaving_nothing(tmp_path):
    import socket
    import time

    try:
        socket.create_connection(("ossci-datasets.s3.amazonaws.com", 443), timeout=3).close()
        pytest.skip("this machine reaches the download mirror: offline behaviour cannot be shown here")
    except OSError:
        pass
    out = tmp_path / "out"
    started = time.monotonic()
    done = _digitgen("run", "--data-root", str(tmp_path / "empty"), "--out", str(out), env={"DIGITGEN_DATA_SOURCE": ""})
    assert done.returncode != 0 and time.monotonic() - started < 30
    assert "cannot be reached" in done.stderr and "DIGITGEN_DATA_SOURCE" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir()), "no run folder is left"
    assert not (tmp_path / "empty").exists(), "nor an empty data root"


@pytest.mark.parametrize("source", ["empty", "partial"])
def test_a_source_that_cannot_give_the_data_fails_in_one_line_before_any_server(tmp_path, data_source, source):
    """An empty or partial DIGITGEN_DATA_SOURCE, with a data root that lacks the data: one line naming the missing
    file, before any Prefect server starts (no server: no retries of a flow's tasks either); nothing is created."""
    import shutil

    folder = tmp_path / "source"
    folder.mkdir()
    if source == "partial":
        for name in sorted(p.name for p in data_source.iterdir())[:2]:
            shutil.copyfile(data_source / name, folder / name)
    done = _digitgen(
        "run",
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        env={"DIGITGEN_DATA_SOURCE": str(folder), "PREFECT_HOME": str(tmp_path / "home")},
    )
    assert done.returncode != 0
    assert f"data source {folder} has no " in done.stderr and "Nothing was run" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "prefect.db").exists(), "a temporary server was started (it makes its database)"
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_each_datasets_archives_are_torchvisions_official_ones():
    """The md5s written in digitgen/data/datasets.py (so that listing versions never imports torch) are torchvision's."""
    import torchvision.datasets

    from digitgen.data.datasets import DATASETS

    for spec in DATASETS.values():
        official = {url.rsplit("/", 1)[-1]: md5 for url, md5 in getattr(torchvision.datasets, spec.folder).resources}
        assert list(spec.files.items()) == list(official.items()) and len(official) == 4, spec.name  # in order:
        # version ids hash them in this order


def test_both_datasets_load_as_torchvision_reads_them_without_importing_it(data_root, fashion_root):
    """The extracted archives are read directly (torchvision's import costs a process a second and 150 MB): the same
    tensors as torchvision's MNIST and FashionMNIST give, and a process that loads data already extracted never
    imports it, through the download stage's path too."""
    import subprocess
    import sys

    import torch
    import torchvision.datasets
    from conftest import ROOT

    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset, raw_folder

    for root, name in ((data_root, "mnist"), (fashion_root, "fashion-mnist")):
        spec, folder = get_dataset(name), str(raw_folder(root, get_dataset(name)))

        class Reference(getattr(torchvision.datasets, spec.folder)):
            raw_folder = folder

        ours = load_dataset(root, spec, keep=False)
        splits = ((True, ours.train_images, ours.train_labels), (False, ours.test_images, ours.test_labels))
        for train, images, labels in splits:
            theirs = Reference(str(root), train=train)
            assert torch.equal(images, theirs.data) and torch.equal(labels, theirs.targets), (name, train)
            assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    code = (
        "import sys; from digitgen.data.datasets import get_dataset; from digitgen.data.loading import load_dataset; "
        f"d = load_dataset({str(data_root)!r}, get_dataset('mnist'), download=True); "
        "print(len(d.train_images), len(d.test_labels), 'torchvision' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.split() == ["60000", "10000", "False"], done.stderr[-2000:]


def test_a_damaged_extracted_file_is_named_with_what_to_do(tmp_path, data_root):
    """A truncated file beside its archive, as a full disk leaves one: the download stage names it and the fix
    (delete it: it is extracted again), never "could not download" after retries; a missing one says what extracts
    it."""
    from conftest import copy_archives

    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import DataSourceError, load_dataset
    from tasks.ingest import download_data

    root = copy_archives(data_root, tmp_path / "data")
    images = root / "mnist" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-784])  # the last test image cut off
    with pytest.raises(DataSourceError, match="t10k-images-idx3-ubyte is not the uint8 idx file.*delete it"):
        download_data.fn("mnist", root)
    images.unlink()
    with pytest.raises(DataSourceError, match="t10k-images-idx3-ubyte is missing.*Any digitgen run or ingest"):
        load_dataset(root, get_dataset("mnist"), keep=False)
    assert len(load_dataset(root, get_dataset("mnist"), download=True, keep=False).test_images) == 10_000
