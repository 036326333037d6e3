"""New labelled batches: read a folder of PNGs, describe every image, and check it before it can reach a model.

A batch is torchvision's ImageFolder layout: `<batch>/<class index>/<any name>.png`, 8-bit greyscale, bright
strokes on a dark background, the dataset's image size.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from digitgen.data.datasets import DatasetSpec
from digitgen.data.validation import Check, ValidationReport, image_stats, run_checks

MIN_IMAGES = 10  # fewer cannot say anything about drift or label agreement
MAX_CLASS_SHARE = 0.5  # "not wildly skewed": no class may hold more than half of a batch
PSI_BINS = 10  # population stability index over deciles of the current version's training set
PSI_LIMIT = 0.25  # the usual "major shift" threshold for PSI; a batch's own sampling noise is allowed on top
INVERTED_BORDER = 0.5  # mean intensity of the outer ring above which an image is dark-on-light
MAX_FILE_BYTES = 1 << 20  # a 28 x 28 PNG takes under 2 KB; a file this big is no such image and is not read
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Batch:
    """What was read from a batch folder: one table row per file, and the images that could be used."""

    folder: Path
    table: pd.DataFrame  # file, label, error, then the image facts (empty for unusable files)
    images: torch.Tensor  # uint8 [M, H, W]: the usable images, in table order
    labels: torch.Tensor  # int64 [M]
    usable: np.ndarray  # bool [rows]: which table rows the images are
    checksum: str  # sha256 of every file's path and bytes: the source folder's identity


def _label(folder: str, spec: DatasetSpec) -> int | None:
    return int(folder) if folder.isdigit() and int(folder) < spec.n_classes else None


def shown(name: str) -> str:
    """A file name fit for tables, logs and JSON: bytes that are not UTF-8 are shown as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def batch_entries(folder: Path) -> list[tuple[Path, str | None]]:
    """(path, problem) for every entry under `folder` but hidden ones, sorted; nothing is followed or opened. The
    problem says why an entry is not read: a symbolic link (to a file or a folder), a FIFO, socket or device, a
    hard link shared with another file, a name that is not UTF-8, or a file too big to be an image."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        root = Path(root)
        for name in list(dirs):
            if name.startswith(".") or (root / name).is_symlink():
                dirs.remove(name)  # not entered: a hidden folder is still arriving, a linked one is not the batch's
                if not name.startswith("."):
                    found.append(
                        (
                            root / name,
                            "a symbolic link to a folder: batches are read, never followed; "
                            "copy the files themselves into the batch",
                        )
                    )
        for name in files:
            if not name.startswith("."):
                found.append((root / name, _entry_problem(root / name)))
    return sorted(found)


def _entry_problem(path: Path) -> str | None:
    mode = path.lstat()
    if stat.S_ISLNK(mode.st_mode):
        return "a symbolic link: batches are read, never followed; copy the file itself into the batch"
    if not stat.S_ISREG(mode.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode.st_mode) else "a socket" if stat.S_ISSOCK(mode.st_mode) else "a device"
        return f"{kind}, not a regular file"
    if mode.st_nlink > 1:
        return "a hard link shared with another file: copy the file itself into the batch"
    if mode.st_size > MAX_FILE_BYTES:
        return f"{mode.st_size:,} bytes: too big for a PNG image of this dataset, not read"
    if shown(path.name) != path.name or shown(path.parent.name) != path.parent.name:
        return "its name is not valid UTF-8: rename it"
    return None


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file, never through a link (O_NOFOLLOW), never blocking on a FIFO swapped in."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        return f.read(MAX_FILE_BYTES + 1)


def decode_png(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The image in `data`, checked by its header before any pixel is decoded: the PNG signature (a JPEG named .png
    is refused), the size in IHDR (a decompression bomb is never inflated), then the mode."""
    h, w = shape
    if data[:8] != PNG_SIGNATURE:
        what = "JPEG data" if data[:3] == b"\xff\xd8\xff" else "empty" if not data else "other data"
        raise ValueError(f"not a PNG file (it holds {what})")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ValueError("a damaged PNG file (no image header)")
    width, height = struct.unpack(">II", data[16:24])
    if (width, height) != (w, h):
        raise ValueError(f"{width}x{height} pixels, expected {w}x{h}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.mode != "L":
                raise ValueError(f"mode {img.mode}, expected 8-bit greyscale (L)")
            img.load()  # every byte: a truncated file fails here
            return np.asarray(img, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:  # OSError, SyntaxError, zlib and struct errors of a damaged file
        raise ValueError(f"cannot be decoded ({type(e).__name__}: {e})") from None


def read_batch(folder: str | Path, spec: DatasetSpec) -> Batch:
    """Read every file under `<folder>/<class>/`; unreadable, wrongly shaped or misplaced files get an `error`.
    Links, special files and oversized files are named and never read (`batch_entries`)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise FileNotFoundError(f"batch folder {folder} does not exist (or is a link: give the folder itself)")
    rows, images, digest = [], [], hashlib.sha256()
    for path, problem in batch_entries(folder):
        rel = path.relative_to(folder).as_posix()
        row = {"file": shown(rel), "label": shown(path.parent.name) if path.parent != folder else None, "error": None}
        try:
            if problem:
                digest.update(os.fsencode(rel) + b"\0" + problem.encode())
                raise ValueError(problem)
            data = _read_regular(path)
            digest.update(os.fsencode(rel) + b"\0" + hashlib.sha256(data).digest())
            if path.parent.parent != folder:
                raise ValueError(f"not in a class folder: put it in {folder.name}/<class index>/")
            if path.suffix.lower() != ".png":
                raise ValueError("not a .png file")
            array = decode_png(data, spec.image_shape)
        except (OSError, ValueError) as e:
            row["error"] = f"{row['file']}: {e}"
        else:
            images.append(array)
        rows.append(row)
    h, w = spec.image_shape
    table = pd.DataFrame(rows, columns=["file", "label", "error"])
    usable = table["error"].isna().to_numpy().copy() if len(table) else np.zeros(0, bool)
    stacked = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, h, w, dtype=torch.uint8)
    labels = [_label(str(x), spec) for x in table.loc[usable, "label"]]
    keep = torch.tensor([lbl is not None for lbl in labels], dtype=torch.bool)
    usable[np.flatnonzero(usable)[~keep.numpy()]] = False  # an image in a folder outside the label set is not used
    return Batch(
        folder,
        table,
        stacked[keep],
        torch.tensor([lbl for lbl in labels if lbl is not None], dtype=torch.int64),
        usable,
        digest.hexdigest(),
    )


def image_hashes(images: torch.Tensor) -> list[str]:
    """A content hash per image: equal hashes mean pixel-for-pixel equal images."""
    flat = images.reshape(images.shape[0], -1).contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in flat]


def psi(reference: torch.Tensor, sample: torch.Tensor, bins: int = PSI_BINS, eps: float = 1e-4) -> float:
    """Population stability index sum((p - q) ln(p / q)) of `sample` against deciles of `reference`."""
    edges = torch.quantile(reference.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    p = torch.bincount(torch.bucketize(reference.double(), edges), minlength=bins).double() / len(reference)
    q = torch.bincount(torch.bucketize(sample.double(), edges), minlength=bins).double() / len(sample)
    p, q = p.clamp(min=eps), q.clamp(min=eps)
    return float(((q - p) * torch.log(q / p)).sum())


def psi_limit(n: int, bins: int = PSI_BINS) -> float:
    """PSI_LIMIT plus the 99.9th percentile of PSI for a batch of `n` drawn from the reference itself.

    Without drift n * PSI is about chi-squared with bins - 1 degrees of freedom, so small batches get more room.
    """
    from scipy.stats import chi2

    return PSI_LIMIT + float(chi2.ppf(0.999, bins - 1)) / max(n, 1)


def describe(
    batch: Batch,
    spec: DatasetSpec,
    reference: torch.Tensor,
    known_hashes: set[str],
    judge_predictions: torch.Tensor | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(images, classes, drift) tables for the checks.

    `reference`: uint8 [N, H, W] of the current version's training set; `known_hashes`: hashes of every image
    already in the dataset; `judge_predictions`: the judge classifier's labels for the usable images.
    """
    table = batch.table.copy()
    idx = np.flatnonzero(batch.usable)
    stats = image_stats(batch.images) if len(idx) else {}
    hashes = image_hashes(batch.images) if len(idx) else []
    for column in ("mean", "min", "max", "ink", "border"):
        table[column] = np.nan
        if len(idx):
            table.loc[idx, column] = stats[column].double().numpy()
    table["inverted"] = pd.Series([None] * len(table), dtype=object)
    table["seen_before"] = pd.Series([None] * len(table), dtype=object)
    table["sha"] = pd.Series([None] * len(table), dtype=object)
    table["judge_agrees"] = np.nan
    if len(idx):
        table.loc[idx, "inverted"] = (stats["border"] > INVERTED_BORDER).tolist()
        table.loc[idx, "seen_before"] = [h in known_hashes for h in hashes]
        table.loc[idx, "sha"] = hashes
        if judge_predictions is not None:
            table.loc[idx, "judge_agrees"] = (judge_predictions.cpu() == batch.labels).double().numpy()
    counts = torch.bincount(batch.labels, minlength=spec.n_classes).double()
    classes = pd.DataFrame({"label": range(spec.n_classes), "share": (counts / max(counts.sum().item(), 1.0)).numpy()})
    ref, n = image_stats(reference), len(idx)
    drift = pd.DataFrame(
        {
            "statistic": ["ink", "mean"],
            "psi": [psi(ref[s], stats[s]) if n else math.nan for s in ("ink", "mean")],
            "limit": psi_limit(n),
        }
    )
    return table, classes, drift


def batch_checks(
    spec: DatasetSpec, tables: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], min_label_agreement: float
) -> list[Check]:
    """The expectations a batch must meet before it may join the dataset."""
    images, classes, drift = tables
    limit = float(drift["limit"].iloc[0])

    def per_image(gxe) -> list:
        return [
            gxe.ExpectTableRowCountToBeBetween(min_value=MIN_IMAGES),
            gxe.ExpectColumnValuesToBeNull(column="error"),  # readable PNG, greyscale, the right size
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[str(c) for c in range(spec.n_classes)]),
            *[
                gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0)
                for c in ("mean", "min", "max")
            ],
            gxe.ExpectColumnValuesToBeBetween(column="ink", min_value=spec.ink_range[0], max_value=spec.ink_range[1]),
            gxe.ExpectColumnValuesToBeInSet(column="inverted", value_set=[False]),
            gxe.ExpectColumnValuesToBeInSet(column="seen_before", value_set=[False]),  # no copies of dataset images
            gxe.ExpectColumnValuesToBeUnique(column="sha"),  # no copies inside the batch
            gxe.ExpectColumnMeanToBeBetween(column="judge_agrees", min_value=min_label_agreement, max_value=1.0),
        ]

    def shares(gxe) -> list:
        return [gxe.ExpectColumnMaxToBeBetween(column="share", max_value=MAX_CLASS_SHARE)]

    def distribution(gxe) -> list:
        return [gxe.ExpectColumnValuesToBeBetween(column="psi", min_value=0.0, max_value=limit)]

    return [
        ("batch", "images", images, per_image),
        ("batch", "classes", classes, shares),
        ("batch", "drift", drift, distribution),
    ]


def check_batch(
    spec: DatasetSpec, tables: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], min_label_agreement: float
) -> ValidationReport:
    """Run every batch expectation on `describe`'s tables; rows that fail are named by their file."""
    return run_checks(batch_checks(spec, tables, min_label_agreement), index_column="file")


def plain_reasons(report: ValidationReport, spec: DatasetSpec) -> list[str]:
    """One sentence per failed check, in the user's words ("300 of 300 images are exact copies of MNIST images
    already in the dataset"); `failure_lines` gives the expectations and figures behind them."""
    reasons = []
    for r in report.failures:
        kw, obs = r["kwargs"], r["observed"]
        n, total = r["unexpected_count"] or 0, r["element_count"]
        some = f"{n:,} of {total:,} images" if total else f"{n:,} images"
        column = kw.get("column")
        h, w = spec.image_shape
        if r["expectation"] == "expect_table_row_count_to_be_between":
            reasons.append(f"The batch holds {obs} images; at least {kw.get('min_value')} are needed to check it.")
        elif column == "error":
            reasons.append(f"{some} are not readable {h}x{w} greyscale PNG files.")
        elif column == "label":
            reasons.append(f"{some} have a label that is not one of {spec.title}'s classes (0-{spec.n_classes - 1}).")
        elif column in ("mean", "min", "max"):
            reasons.append(f"{some} have pixel values outside the range of a {spec.item} image.")
        elif column == "ink":
            reasons.append(f"{some} are nearly blank or nearly filled: not like {spec.title} {spec.items}.")
        elif column == "inverted":
            reasons.append(f"{some} are inverted (a light background with dark strokes).")
        elif column == "seen_before":
            reasons.append(f"{some} are exact copies of {spec.title} images already in the dataset.")
        elif column == "sha":
            reasons.append(f"{some} are copies of other images in this batch.")
        elif column == "judge_agrees":
            reasons.append(
                f"The judge classifier agrees with only {obs:.0%} of the labels (at least "
                f"{kw.get('min_value'):.0%} needed): the batch is mislabelled or not {spec.title}."
            )
        elif column == "share":
            reasons.append(f"One class holds {obs:.0%} of the batch (at most {kw.get('max_value'):.0%} allowed).")
        elif column == "psi":
            reasons.append(
                "Its images differ from the training set's in ink or brightness more than a batch that "
                "size drawn from the training set would (drift)."
            )
        else:
            reasons.append(f"A check failed: {r['expectation']} on {r['table']}.")
    return reasons


def failure_lines(report: ValidationReport) -> list[str]:
    """One line per failed expectation: what was expected, what was observed, which files."""
    lines = []
    for r in report.failures:
        args = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items() if k != "value_set" or len(v) <= 10)
        what = f"{r['table']}: {r['expectation']}({args})"
        if r["observed"] is not None:
            what += (
                f" observed {r['observed']:.4g}" if isinstance(r["observed"], float) else f" observed {r['observed']}"
            )
        if r["unexpected_count"]:
            what += f", {r['unexpected_count']} unexpected"
            if r["unexpected_rows"]:
                what += f" ({', '.join(r['unexpected_rows'][:5])}{', ...' if len(r['unexpected_rows']) > 5 else ''})"
            elif r["unexpected_examples"]:
                what += f" (e.g. {', '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in r['unexpected_examples'][:3])})"
        lines.append(what)
    return lines
