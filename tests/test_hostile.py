"""Hostile batches and damaged records: links and special files are named and never followed, files are checked by
their header before they are decoded, quarantine holds only the batch's own files, a damaged batch file is repaired
by ingesting the same batch again.

The ingest through the command line runs once, on one batch holding every hostile entry at once.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from batch_factory import new_handwriting, pick, write_batch

from digitgen.data.datasets import get_dataset
from digitgen.data.versions import list_versions

ROOT = Path(__file__).resolve().parents[1]
MNIST = get_dataset("mnist")
SECRET = b"root:x:0:0:secret outside bytes\n" * 4


def _png(width: int, height: int, colour: int = 0, depth: int = 8) -> bytes:
    """A PNG whose header claims `width` x `height` (its pixel data are a few bytes: a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_named_png(path: Path, like: Path) -> None:
    from PIL import Image

    with Image.open(like) as img:
        img.save(path, format="JPEG")


@pytest.fixture
def hostile(tmp_path, mnist) -> dict:
    """A batch of 30 good images, plus one entry of each hostile kind; `outside` holds what it points at."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret").write_bytes(SECRET)
    (outside / "folder" / "img.png").write_bytes(SECRET)
    os.mkfifo(outside / "fifo")  # opened for reading, it would block for ever: the test would hang
    images, labels = pick(mnist.train_images, mnist.train_labels, 30, seed=11)
    batch = write_batch(tmp_path / "hostile", new_handwriting(images, seed=11), labels)
    good = next(batch.rglob("img*.png"))
    three = batch / "3"
    three.mkdir(exist_ok=True)
    (three / "passwd.png").symlink_to(outside / "secret")
    (three / "to-fifo.png").symlink_to(outside / "fifo")
    (three / "loop.png").symlink_to(three / "loop.png")
    os.link(outside / "secret", three / "hard.png")
    os.mkfifo(three / "pipe.png")
    (batch / "linked").symlink_to(outside / "folder", target_is_directory=True)
    (three / "bomb.png").write_bytes(_png(20_000, 20_000))
    _jpeg_named_png(three / "photo.png", good)
    (three / os.fsdecode(b"bad-\xff-name.png")).write_bytes(good.read_bytes())
    expected = {
        "3/passwd.png": "a symbolic link",
        "3/to-fifo.png": "a symbolic link",
        "3/loop.png": "a symbolic link",
        "3/hard.png": "a hard link shared with another file",
        "3/pipe.png": "a FIFO, not a regular file",
        "linked": "a symbolic link to a folder",
        "3/bomb.png": "20000x20000 pixels, expected 28x28",
        "3/photo.png": "not a PNG file (it holds JPEG data)",
        "3/bad-\\xff-name.png": "its name is not valid UTF-8",
    }
    return {"batch": batch, "outside": outside, "expected": expected, "good": 30}


def _no_outside_bytes(folder: Path) -> None:
    for path in folder.rglob("*"):
        assert not path.is_symlink() and not path.is_fifo(), f"{path} is not a regular file"
        if path.is_file():
            assert SECRET not in path.read_bytes(), f"{path} holds bytes from outside the batch"


def test_reading_a_hostile_batch_names_each_entry_and_follows_nothing(hostile):
    from digitgen.data.batches import read_batch

    batch = read_batch(hostile["batch"], MNIST)
    errors = dict(zip(batch.table["file"], batch.table["error"]))
    for name, problem in hostile["expected"].items():
        assert errors[name] is not None and problem in errors[name], (name, errors.get(name))
    assert len(batch.labels) == hostile["good"] and int(batch.usable.sum()) == hostile["good"]
    assert all(isinstance(f, str) and f.encode() for f in batch.table["file"]), "every name fit for JSON and GX"


@pytest.mark.parametrize(
    "data, problem",
    [
        (_png(20_000, 20_000), "20000x20000 pixels, expected 28x28"),
        (_png(28, 28, colour=2), "mode RGB"),
        (_png(28, 28, depth=16), "mode I;16"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, "not a PNG file (it holds JPEG data)"),
        (b"", "not a PNG file (it holds empty)"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 10, "a damaged PNG file"),
        (_png(28, 28), "cannot be decoded"),  # a header that promises 784 pixels, data that hold 64 bytes
    ],
)
def test_files_are_checked_by_their_header_before_they_are_decoded(data, problem):
    from digitgen.data.batches import decode_png

    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        decode_png(data, (28, 28))


def test_quarantine_holds_only_the_batchs_own_files_and_clears_what_a_dead_ingest_left(tmp_path, hostile):
    """Consumed from the inbox: the batch's own regular files move to quarantine, links and pipes are not followed
    (they go with the inbox folder), and a temporary folder left by an ingest that died is removed."""
    from digitgen.config import PipelineConfig
    from tasks.batches import quarantine_batch, quarantine_dir

    config = PipelineConfig(data_root=tmp_path / "root")
    stale = quarantine_dir(config) / ".hostile.dead12"
    (stale / "3").mkdir(parents=True)
    (stale / "3" / "half.png").write_bytes(b"half")
    record = {"accepted": False, "name": "hostile", "failures": ["refused"], "reasons": ["links"]}
    dst = Path(quarantine_batch.fn(config, hostile["batch"], record, consume=True))
    assert dst == quarantine_dir(config) / "hostile" and (dst / "validation.json").is_file()
    _no_outside_bytes(dst)
    assert len(list(dst.rglob("img*.png"))) == hostile["good"], "every image of the batch's own is kept"
    assert (dst / "3" / "photo.png").is_file() and (dst / "3" / "bomb.png").is_file(), "own files, though refused"
    assert not hostile["batch"].exists(), "consumed: the inbox folder is gone"
    assert (hostile["outside"] / "secret").read_bytes() == SECRET and (
        hostile["outside"] / "folder" / "img.png"
    ).exists()
    assert sorted(p.name for p in quarantine_dir(config).iterdir()) == ["hostile"], "no hidden half-made folder"


def test_a_damaged_batch_file_names_the_command_that_repairs_it_and_that_command_does(tmp_path, mnist):
    """An accepted batch's .pt altered, then deleted: the error gives the exact ingest command, and ingesting the
    same batch again rewrites the file (the version is unchanged)."""
    import torch

    from digitgen.data.versions import VersionError, add_batch, load_batch

    images, labels = pick(mnist.train_images, mnist.train_labels, 20, seed=5)
    images = new_handwriting(images)
    kept = tmp_path / "mnist" / "accepted" / "b"  # where a batch from the inbox is kept
    write_batch(kept, images, labels)
    manifest = add_batch(tmp_path, MNIST, "b", images, labels, "x")
    entry = manifest["batches"][0]
    path = tmp_path / "mnist" / "batches" / f"{entry['sha256']}.pt"
    for damage in ("altered", "deleted"):
        if damage == "altered":
            state = torch.load(path, weights_only=True)
            state["labels"][0] = (state["labels"][0] + 1) % 10
            torch.save(state, path)
        else:
            path.unlink()
        with pytest.raises(VersionError, match=f"`digitgen ingest {kept} --dataset mnist`"):
            load_batch(tmp_path, MNIST, entry)
        again = add_batch(tmp_path, MNIST, "b", images, labels, "x")
        assert again["id"] == manifest["id"] and len(list_versions(tmp_path, MNIST)) == 2
        got, _ = load_batch(tmp_path, MNIST, entry)
        assert torch.equal(got, images), f"{damage}: repaired"


def test_ingest_of_a_hostile_batch_is_refused_and_quarantined_without_outside_bytes(fresh_root, hostile, shared_server):
    """Through the command line: exit 1 with the refusal (no traceback), every hostile entry named in the record,
    the data root's versions unchanged, the quarantine free of outside bytes, the source batch untouched and no
    process left behind."""
    before = list_versions(fresh_root, MNIST)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitgen.cli",
            "ingest",
            str(hostile["batch"]),
            "--data-root",
            str(fresh_root),
            "--device",
            "cpu",
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **shared_server, "PREFECT_LOGGING_LEVEL": "WARNING"},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "batch hostile refused:" in done.stderr and "are not readable 28x28 greyscale PNG files" in done.stderr
    assert list_versions(fresh_root, MNIST) == before
    quarantined = fresh_root / "mnist" / "quarantine" / "hostile"
    record = json.loads((quarantined / "validation.json").read_text())
    named = "\n".join(record["failures"])
    for name in ("3/passwd.png", "3/pipe.png", "3/hard.png", "3/bomb.png", "3/photo.png"):
        assert name in named or any(name in str(r) for r in record["expectations"]), name
    _no_outside_bytes(quarantined)
    assert (hostile["batch"] / "3" / "passwd.png").is_symlink(), "the source batch is left as it was"
    leftover = subprocess.run(["pgrep", "-f", f"ingest {hostile['batch']}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "no process left over"


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs, filled up: every write onto it fails for want of space."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): disk-full is not simulated")
    try:
        with open(mount / "ballast", "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_torchs_checkpoint_writer_on_a_full_disk_says_so_in_one_line(full_disk):
    import torch

    from digitgen.io import atomic_path

    target = full_disk / "run" / "vae.pt"
    target.parent.mkdir()
    with pytest.raises(OSError, match=f"No space left on device while writing {target}; free some space"):
        with atomic_path(target) as tmp:
            torch.save({"w": torch.zeros(1_000_000)}, tmp)  # torch says "[enforce fail at inline_container.cc]"
    assert list(target.parent.iterdir()) == [], "no half-written file"


def test_a_quarantine_onto_a_full_disk_still_gives_the_reasons_and_leaves_nothing(tmp_path, full_disk, hostile):
    from digitgen.config import PipelineConfig
    from tasks.batches import BatchRefusedError, quarantine_batch

    config = PipelineConfig(data_root=full_disk / "root")
    record = {"accepted": False, "name": "hostile", "failures": ["detail"], "reasons": ["9 of 39 images are bad."]}
    with pytest.raises(BatchRefusedError) as refused:
        quarantine_batch.fn(config, hostile["batch"], record, consume=True)
    message = str(refused.value)
    assert "batch hostile refused:\n  - 9 of 39 images are bad.\nIt could not be quarantined in " in message
    assert str(full_disk / "root" / "mnist" / "quarantine" / "hostile") in message and len(message) < 1000
    assert [p.name for p in (full_disk / "root" / "mnist" / "quarantine").iterdir()] == [], "no half copy"
    assert len(list(hostile["batch"].rglob("img*.png"))) == hostile["good"], "the batch is where it was"


def test_a_data_root_that_is_a_file_fails_at_once_naming_the_variable_that_set_it(tmp_path, hostile, data_source):
    """No download retries for a local fault: the task fails on its first try; the command line names
    DIGITGEN_DATA_ROOT, not a flag that was never given, before any server starts."""
    import time

    from tasks.ingest import LocalDataError, download_data

    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    with pytest.raises(LocalDataError, match=f"data root {afile}: Not a directory"):
        download_data.fn("mnist", afile, data_source)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "digitgen.cli", "ingest", str(hostile["batch"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DIGITGEN_DATA_ROOT": str(afile)},
    )
    assert done.returncode == 1 and time.monotonic() - started < 30, done.stderr
    assert f"DIGITGEN_DATA_ROOT={afile}: {afile} is a file, not a folder" in done.stderr, done.stderr
    assert "--data-root" not in done.stderr and "Traceback" not in done.stderr
    assert afile.read_text() == "not a folder"


def test_full_disk_staging_is_not_retried_as_a_download(tmp_path, full_disk, data_source):
    from tasks.ingest import LocalDataError, download_data

    with pytest.raises(LocalDataError, match="No space left on device while writing .*; free some space"):
        download_data.fn("mnist", full_disk / "data", data_source)
    assert not list((full_disk / "data").rglob("*.tmp")) and not list((full_disk / "data").rglob(".*"))
