"""MNIST on disk -> uint8 tensors in memory. Offline machines stage the official .gz files first."""

from __future__ import annotations

import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from models.io import atomic_path

# torchvision's own list of (file name, md5) for the four official MNIST archives.
MNIST_FILES: dict[str, str] = {name.rsplit("/", 1)[-1]: md5 for name, md5 in MNIST.resources}


class DataSourceError(RuntimeError):
    """The offline data source is missing, incomplete or corrupt."""


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage_source(source: str | Path, root: str | Path) -> Path:
    """Copy the four official .gz files from `source` into `<root>/MNIST/raw/`, verified by md5.

    Each file is copied to a temporary name, checked, then renamed, so the data root never holds
    half a file. `source` is only read. Returns the raw folder.
    """
    source, raw = Path(source), Path(root) / "MNIST" / "raw"
    hint = "Point DIGITGEN_DATA_SOURCE (or --data-source) at a folder holding the official MNIST .gz files."
    if not source.is_dir():
        raise DataSourceError(f"data source {source} is not a folder. {hint}")
    for name, expected in MNIST_FILES.items():
        src, dst = source / name, raw / name
        if not src.is_file():
            raise DataSourceError(f"data source {source} has no {name}. {hint}")
        if dst.is_file() and md5sum(dst) == expected:
            continue
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
            got = md5sum(tmp)
            if got != expected:
                raise DataSourceError(
                    f"{src} has md5 {got}, expected {expected} (the official {name}): the file is "
                    f"truncated or not the MNIST archive. Replace it with a fresh copy. {hint}"
                )
    return raw


@dataclass(frozen=True)
class Mnist:
    """Both splits as tensors: images uint8 [N, 28, 28], labels int64 [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_mnist(root: str | Path, download: bool = False) -> Mnist:
    """Load MNIST from `<root>/MNIST` (downloading through torchvision if asked)."""
    return _load_mnist(str(Path(root).resolve()), download)


@functools.lru_cache(maxsize=2)
def _load_mnist(root: str, download: bool) -> Mnist:
    train, test = (MNIST(root, train=t, download=download) for t in (True, False))
    return Mnist(train.data, train.targets, test.data, test.targets)


def dataset_fingerprint(root: str | Path) -> str:
    """A checksum of the archives in `<root>/MNIST/raw` and of the files extracted from them (what is loaded)."""
    raw = Path(root) / "MNIST" / "raw"
    h = hashlib.sha256(folder_fingerprint(raw).encode())
    for name in sorted(MNIST_FILES):
        path = raw / name.removesuffix(".gz")
        h.update(md5sum(path).encode() if path.is_file() else b"missing")
    return h.hexdigest()[:16]


def folder_fingerprint(raw: str | Path) -> str:
    """A checksum of the four MNIST archives in a folder ("missing" stands in for an absent file)."""
    raw = Path(raw)
    h = hashlib.sha256()
    for name in sorted(MNIST_FILES):
        path = raw / name
        h.update(name.encode())
        h.update(md5sum(path).encode() if path.is_file() else b"missing")
    return h.hexdigest()[:16]


def is_extracted(root: str | Path) -> bool:
    """True when the archives and the files torchvision extracts from them are all in place."""
    raw = Path(root) / "MNIST" / "raw"
    return all((raw / name).is_file() and (raw / name.removesuffix(".gz")).is_file() for name in MNIST_FILES)


def to_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1] on `device`."""
    return images.to(device).unsqueeze(1).float().div_(255.0)
