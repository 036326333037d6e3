"""A dataset's archives on disk -> uint8 tensors in memory. Offline machines stage the official .gz files first."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from digitgen.data.datasets import DatasetSpec
from digitgen.errors import DigitgenError
from digitgen.io import atomic_path


class DataSourceError(DigitgenError, RuntimeError):
    """The offline data source is missing, incomplete or corrupt."""


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint_md5(path: Path) -> str:
    """md5sum(path), read once per process while the file stays as it was. A run fingerprints its data three times
    (the download stage's cache key, the gate, the promotion): 66 MB of md5 each, 0.1 s of a core. Any write changes
    a file's ctime, which cannot be set back, so a changed or replaced file is read again."""
    st = path.stat()
    return _md5_of(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=64)
def _md5_of(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return md5sum(Path(path))


def raw_folder(root: str | Path, spec: DatasetSpec) -> Path:
    """Where a data root keeps the dataset's archives (and the files extracted from them): `<root>/<name>/raw`, in
    the dataset's own folder beside its versions, batches and judge. (torchvision's `<root>/<folder>/raw`, e.g.
    `MNIST/raw` beside `mnist/`, clashed on file systems blind to case; a data root laid out so is moved over by
    `stage_source`.)"""
    return Path(root) / spec.name / "raw"


def adopt_torchvision_layout(root: str | Path, spec: DatasetSpec) -> None:
    """Move the archives of a data root laid out as torchvision does (`<root>/<folder>/raw`, as digitgen did before)
    to `raw_folder`, in one rename; nothing when the data root has them there already."""
    old, new = Path(root) / spec.folder / "raw", raw_folder(root, spec)
    if old.is_dir() and not new.exists():
        try:
            new.parent.mkdir(parents=True, exist_ok=True)
            old.rename(new)
        except OSError as e:
            if not new.is_dir():  # not moved by another run meanwhile: a link to another disk, or no permission
                raise DataSourceError(
                    f"the data root {root} holds the {spec.title} archives in torchvision's {old} and they cannot be "
                    f"moved to {new} ({e.strerror}): move them there (mv {old} {new}) and run again"
                ) from None
        with contextlib.suppress(OSError):  # left only if something else is in it
            old.parent.rmdir()


def resolve_source(source: str | Path, spec: DatasetSpec) -> Path:
    """The folder holding the dataset's .gz files: `source` itself, `<source>/<folder>/raw` (torchvision's layout)
    or `<source>/<name>/raw` (another data root)."""
    source = Path(source)
    hint = (
        f"Point DIGITGEN_DATA_SOURCE (or --data-source) at a folder holding the four official {spec.title} .gz "
        f"files, or at a root holding {spec.folder}/raw/ (torchvision's layout)."
    )
    if not source.is_dir():
        raise DataSourceError(f"data source {source} is not a folder. {hint}")
    if not any((source / name).is_file() for name in spec.files):
        for nested in (source / spec.folder / "raw", raw_folder(source, spec)):
            if nested.is_dir():
                return nested
    return source


def _lacking(root: str | Path, spec: DatasetSpec) -> dict[str, str]:
    """The official archives ({name: md5}) that the data root does not hold verified (absent, or another md5)."""
    raw = raw_folder(root, spec)
    return {n: md5 for n, md5 in spec.files.items() if not ((raw / n).is_file() and md5sum(raw / n) == md5)}


def _source_file(source: Path, name: str, spec: DatasetSpec) -> Path:
    if not (source / name).is_file():
        raise DataSourceError(
            f"data source {source} has no {name}. Point DIGITGEN_DATA_SOURCE (or --data-source) at "
            f"a folder holding the official {spec.title} .gz files."
        )
    return source / name


def _wrong_md5(src: Path, got: str, name: str, spec: DatasetSpec) -> DataSourceError:
    return DataSourceError(
        f"{src} has md5 {got}, expected {spec.files[name]} (the official {name}): the file is "
        f"truncated or not the {spec.title} archive. Replace it with a fresh copy. Point "
        f"DIGITGEN_DATA_SOURCE (or --data-source) at a folder holding the official {spec.title} "
        ".gz files."
    )


def check_source(source: str | Path, root: str | Path, spec: DatasetSpec) -> None:
    """Raise DataSourceError now if `source` cannot give the data root an archive it lacks (missing, empty, partial
    or wrong files): what `stage_source` would find, without copying anything. A data root that already holds the
    verified archives needs no source."""
    lacking = _lacking(root, spec)
    if lacking:
        folder = resolve_source(source, spec)
        for name in lacking:
            src = _source_file(folder, name, spec)
            got = md5sum(src)
            if got != spec.files[name]:
                raise _wrong_md5(src, got, name, spec)


def stage_source(source: str | Path, root: str | Path, spec: DatasetSpec) -> Path:
    """Copy the official .gz files that `<root>/<name>/raw/` lacks from `source`, verified by md5 (files already
    there and verified are kept: the source is not needed for them; a data root in torchvision's layout is moved
    over first).

    Each file is copied to a temporary name, checked, then renamed, so the data root never holds
    half a file. `source` is only read. Returns the raw folder.
    """
    adopt_torchvision_layout(root, spec)
    raw, lacking = raw_folder(root, spec), _lacking(root, spec)
    if lacking:
        folder = resolve_source(source, spec)
        for name in lacking:
            src = _source_file(folder, name, spec)
            with atomic_path(raw / name) as tmp:
                shutil.copyfile(src, tmp)
                got = md5sum(tmp)
                if got != spec.files[name]:
                    raise _wrong_md5(src, got, name, spec)
    return raw


@dataclass(frozen=True)
class Splits:
    """Both splits as tensors: images uint8 [N, 28, 28], labels int64 [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_dataset(root: str | Path, spec: DatasetSpec, download: bool = False, keep: bool = True) -> Splits:
    """Load the official splits from the files extracted in `<root>/<name>/raw`. `download`: fetch and extract the
    archives first (through torchvision, which skips the network when they verify). `keep`: hold the splits for the
    process's next call (a run loads them in several stages); an ingest reads them once (55 MB)."""
    adopt_torchvision_layout(root, spec)
    root = str(Path(root).resolve())
    if download:
        _fetch(root, spec)
    return (_load if keep else _load.__wrapped__)(root, spec.name)


def _fetch(root: str, spec: DatasetSpec) -> None:
    """Nothing when the four extracted files are there (what torchvision checks first; they are read and checked
    next); else torchvision's download of the archives into `raw_folder` (skipped for those there that verify) and
    the extraction of all four."""
    if is_extracted(root, spec):  # torchvision is not even imported
        return
    folder = str(raw_folder(root, spec))

    class InRawFolder(spec.torchvision):  # its archives in `raw_folder`, not <root>/<folder>
        raw_folder = folder

    InRawFolder.__new__(InRawFolder).download()  # needs only the class's files, mirrors and folder: reads no data


@functools.lru_cache(maxsize=2)
def _load(root: str, name: str) -> Splits:
    from digitgen.data.datasets import DATASETS

    spec = DATASETS[name]
    raw = raw_folder(root, spec)
    images, labels = (
        {split: _read_idx(raw / f"{split}-{kind}-idx{dims}-ubyte", spec, dims) for split in ("train", "t10k")}
        for kind, dims in (("images", 3), ("labels", 1))
    )
    return Splits(images["train"], labels["train"].long(), images["t10k"], labels["t10k"].long())


def _read_idx(path: Path, spec: DatasetSpec, ndim: int) -> torch.Tensor:
    """A file extracted from its archive: LeCun's idx format, of uint8 with `ndim` dimensions, as torchvision's MNIST
    reads it, but without importing torchvision (over a second and 150 MB of memory of a process that only checks a
    batch)."""
    if not path.is_file():
        raise DataSourceError(
            f"{path} is missing: the {spec.title} archives in {path.parent} are not extracted. Any digitgen run or "
            "ingest extracts them (its download stage), offline too"
        )
    data = bytearray(path.stat().st_size)
    with open(path, "rb") as f:
        whole = f.readinto(data) == len(data) and not f.read(1)  # not changed meanwhile
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else ()
    if not whole or data[:4] != bytes((0, 0, 8, ndim)) or len(data) != header + math.prod(dims):
        raise DataSourceError(
            f"{path} is not the uint8 idx file extracted from {path.name}.gz (truncated or replaced): delete it and "
            "run again, and it is extracted once more from the archive"
        )
    return torch.frombuffer(data, dtype=torch.uint8, offset=header).view(*dims)


def dataset_fingerprint(root: str | Path, spec: DatasetSpec) -> str:
    """A checksum of the archives in `<root>/<name>/raw` and of the files extracted from them (what is loaded)."""
    raw = raw_folder(root, spec)
    h = hashlib.sha256(folder_fingerprint(raw, spec).encode())
    for name in sorted(spec.files):
        path = raw / name.removesuffix(".gz")
        h.update(_fingerprint_md5(path).encode() if path.is_file() else b"missing")
    return h.hexdigest()[:16]


def folder_fingerprint(raw: str | Path, spec: DatasetSpec) -> str:
    """A checksum of the dataset's four archives in a folder ("missing" stands in for an absent file)."""
    raw = Path(raw)
    h = hashlib.sha256()
    for name in sorted(spec.files):
        path = raw / name
        h.update(name.encode())
        h.update(_fingerprint_md5(path).encode() if path.is_file() else b"missing")
    return h.hexdigest()[:16]


def is_extracted(root: str | Path, spec: DatasetSpec) -> bool:
    """True when the archives and the files torchvision extracts from them are all in place."""
    raw = raw_folder(root, spec)
    return all((raw / name).is_file() and (raw / name.removesuffix(".gz")).is_file() for name in spec.files)


def to_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1] on `device`."""
    return images.to(device).unsqueeze(1).float().div_(255.0)
