"""New labelled batches: check one with Great Expectations, then add it as a new data version or quarantine it."""

from __future__ import annotations

import contextlib
import fcntl
import html
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from digitgen.config import PipelineConfig
from digitgen.data.batches import (
    Batch,
    check_batch,
    describe,
    failure_lines,
    image_hashes,
    plain_reasons,
    read_batch,
)
from digitgen.data.datasets import DATASETS, DatasetSpec, get_dataset
from digitgen.data.loading import load_dataset, to_float
from digitgen.data.validation import ValidationReport
from digitgen.data.versions import (
    add_batch,
    batch_sha,
    dataset_dir,
    newest_version,
    version_holding,
    version_train_set,
)
from digitgen.errors import DigitgenError
from digitgen.figures.plots import png_data_uri, save_labelled_grid
from digitgen.io import write_json
from models.classifier import predict
from tasks.classifier import load_classifier
from tasks.common import in_run, logger, markdown_artifact
from tasks.results import JudgeModel
from tasks.validate import artifact_rows


class BatchRefusedError(DigitgenError, ValueError):
    """A batch failed its checks: it was quarantined and the dataset is unchanged."""


def incoming_dir(config: PipelineConfig) -> Path:
    """`<data root>/<dataset>/incoming/`: drop batch folders here for the check-data deployment."""
    return dataset_dir(config.data_root, get_dataset(config.dataset)) / "incoming"


def quarantine_dir(config: PipelineConfig) -> Path:
    return dataset_dir(config.data_root, get_dataset(config.dataset)) / "quarantine"


def _publish(spec: DatasetSpec, batch, outcome: dict) -> None:
    """The `data-ingest` artifact: the verdict, every expectation's outcome and a few images of the batch."""
    if not in_run():
        return
    verdict = "accepted" if outcome["accepted"] else "REFUSED"
    rows = artifact_rows(outcome["report"])
    e = lambda text: html.escape(str(text), quote=False).replace("|", "\\|")  # noqa: E731
    lines = [
        f"# Batch `{e(batch.folder.name)}`: {verdict}",
        "",
        f"{len(batch.table)} files, {len(batch.labels)} usable images; checked against {spec.title} version "
        f"{outcome['parent']}.",
        "",
    ]
    lines += [f"- {e(line)}" for line in outcome.get("reasons", [])] + ([""] if outcome.get("reasons") else [])
    lines += [f"- {e(line)}" for line in outcome["failures"]] + ([""] if outcome["failures"] else [])
    # four narrow columns (the UI cuts a wide table off on the right); each failed expectation's arguments and
    # examples in a list below it
    lines += ["| expectation (table: name) | passed | observed | unexpected |", "|---|---|---|---:|"]
    lines += [
        f"| {r['table']}: {r['expectation'].removeprefix('expect_')} | {'yes' if r['success'] else '**no**'} | "
        f"{e(r['observed'])[:30]} | {r['unexpected']} |"
        for r in rows
    ]
    failed = [r for r in rows if not r["success"]]
    if failed:
        lines += ["", "Failed expectations, with their arguments and unexpected examples:", ""]
        lines += [
            f"- {r['table']}: {r['expectation']}({e(r['arguments'])[:80]}), e.g. {e(r['examples'])[:80]}"
            for r in failed
        ]
    if len(batch.labels):
        with tempfile.TemporaryDirectory() as tmp:
            n = min(24, len(batch.labels))
            labels = [spec.classes[i] for i in batch.labels[:n].tolist()]
            grid = save_labelled_grid(
                Path(tmp) / "batch.png",
                to_float(batch.images[:n]),
                labels,
                f"The first {n} images of the batch, with their given labels",
            )
            lines += ["", f"![batch images]({png_data_uri(grid)})"]
    markdown_artifact("data-ingest", "\n".join(lines), f"{spec.title} batch {batch.folder.name}: {verdict}")


@task(cache_policy=NONE)
def check_new_batch(config: PipelineConfig, batch_folder: Path, judge: JudgeModel) -> dict:
    """Run every expectation on a batch against the newest version; publish the `data-ingest` artifact."""
    spec, log = get_dataset(config.dataset), logger()
    batch = read_batch(batch_folder, spec)
    held = version_holding(config.data_root, spec, batch_sha(batch.images, batch.labels)) if len(batch.labels) else None
    if held is not None and batch.usable.all():  # committed by an ingest that died before it finished
        log.info("Batch %s is already part of version %s: finishing its ingest", Path(batch_folder).name, held["id"])
        return {
            "accepted": True,
            "name": Path(batch_folder).name,
            "checksum": batch.checksum,
            "n_files": len(batch.table),
            "n_images": int(len(batch.labels)),
            "parent": held["parent"],
            "failures": [],
            "report": ValidationReport(success=True),
            "already_in": held["id"],
        }
    manifest = newest_version(config.data_root, spec)
    tables = _describe(config, spec, batch, manifest, judge)  # the dataset's images are let go before the checks run
    agreement = spec.min_label_agreement if config.min_label_agreement is None else config.min_label_agreement
    report = check_batch(spec, tables, agreement)
    outcome = {
        "accepted": report.success,
        "name": Path(batch_folder).name,
        "checksum": batch.checksum,
        "n_files": len(batch.table),
        "n_images": int(len(batch.labels)),
        "parent": manifest["id"],
        "reasons": plain_reasons(report, spec),
        "failures": failure_lines(report),
        "report": report,
    }
    _publish(spec, batch, outcome)
    if report.success:
        log.info("Batch %s passed all %d expectations", outcome["name"], len(report.results))
    else:
        log.warning("Batch %s refused:\n  %s", outcome["name"], "\n  ".join(outcome["reasons"]))
    return outcome


def _describe(
    config: PipelineConfig, spec: DatasetSpec, batch: Batch, manifest: dict, judge: JudgeModel
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The batch's tables for the checks: its images against the version's training images and every image already
    in the dataset, its labels against the judge's."""
    data = load_dataset(config.data_root, spec, keep=False)
    reference, _ = version_train_set(config.data_root, spec, manifest, data.train_images, data.train_labels)
    predictions = None
    if len(batch.labels):
        judge_model = load_classifier(judge.checkpoint)
        predictions = torch.cat(
            [predict(judge_model, to_float(chunk))[0].argmax(1) for chunk in batch.images.split(4096)]
        )
    known = set(image_hashes(reference)) | set(image_hashes(data.test_images))  # every image already in the dataset
    return describe(batch, spec, reference, known, predictions)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _place_dir(src: Path, dst: Path, move: bool, files: dict[str, dict] | None = None, own_only: bool = False) -> Path:
    """Copy (or move) folder `src` to `dst`, with `files` (JSON) added, through a temporary name: `dst` is never
    half there. An earlier folder of the same name is kept, renamed `<name>~<time>`. `own_only`: only the batch's own
    regular files are copied (links, special files and shared hard links stay behind, never followed), and a move
    removes `src` after the copy. Temporary folders left by an ingest that died are removed here first."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    _sweep_unfinished(dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    with _held_dir(tmp):
        try:
            if own_only:  # a batch folder that is itself a link has no files of its own
                if not src.is_symlink():
                    shutil.copytree(src, tmp, symlinks=True, ignore=_not_own, dirs_exist_ok=True)
            elif move:
                tmp.rmdir()
                shutil.move(str(src), tmp)
            else:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
            for name, content in (files or {}).items():
                write_json(tmp / name, content)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if dst.exists():
            dst.rename(dst.with_name(f"{dst.name}~{time.strftime('%Y%m%d-%H%M%S')}-{tmp.name[-6:]}"))
        tmp.rename(dst)
    if own_only and move:
        (src.unlink if src.is_symlink() else lambda: shutil.rmtree(src, ignore_errors=True))()
    return dst


def _not_own(folder: str, names: list[str]) -> set[str]:
    """For copytree: every entry but folders and regular files that are the batch's alone."""
    skip = set()
    for name in names:
        mode = os.lstat(os.path.join(folder, name))
        if not (stat.S_ISDIR(mode.st_mode) or (stat.S_ISREG(mode.st_mode) and mode.st_nlink == 1)):
            skip.add(name)
    return skip


@contextlib.contextmanager
def _held_dir(path: Path):
    """An exclusive lock on a temporary folder while it is filled: `_sweep_unfinished` leaves it alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sweep_unfinished(parent: Path) -> None:
    """Remove the temporary `.<name>.<random>` folders under `parent` that no living ingest holds."""
    for path in parent.glob(".*.*"):
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # being filled
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


@task(cache_policy=NONE)
def quarantine_batch(config: PipelineConfig, batch_folder: Path, outcome: dict, consume: bool = False) -> str:
    """Put a refused batch in `<data root>/<dataset>/quarantine/<name>/` with its validation.json."""
    record = {k: v for k, v in outcome.items() if k != "report"}
    report = outcome.get("report")
    record.update(quarantined_at=_now(), expectations=report.results if report is not None else [])
    folder = quarantine_dir(config) / outcome["name"]
    try:
        dst = _place_dir(Path(batch_folder), folder, consume, {"validation.json": record}, own_only=True)
    except (OSError, shutil.Error) as e:  # a full disk: the refusal still says why, and where the batch is
        why = (
            f"{len(e.args[0])} files could not be copied, the first: {e.args[0][0][2]}"
            if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]
            else str(e)
        )
        reasons = "\n".join(f"  - {line}" for line in outcome.get("reasons") or outcome.get("failures") or [])
        raise BatchRefusedError(
            f"batch {outcome['name']} refused:\n{reasons}\nIt could not be quarantined in "
            f"{folder} ({why}); nothing was left there, the batch is still in {batch_folder} and "
            f"the data version is unchanged. Free some space and ingest it again."
        ) from None
    logger().warning("Batch %s quarantined in %s", outcome["name"], dst)
    return str(dst)


@task(cache_policy=NONE)
def add_to_dataset(config: PipelineConfig, batch_folder: Path, outcome: dict, consume: bool = False) -> dict:
    """Append a checked batch as a new data version; emit `digitgen.data.changed` with the new version."""
    spec = get_dataset(config.dataset)
    batch = read_batch(batch_folder, spec)
    if batch.checksum != outcome["checksum"]:
        raise BatchRefusedError(f"batch {batch_folder} changed while it was being checked; ingest it again")
    manifest = add_batch(
        config.data_root,
        spec,
        outcome["name"],
        batch.images,
        batch.labels,
        batch.checksum,
        checked_against=None if outcome.get("already_in") else outcome["parent"],
    )
    logger().info(
        "Batch %s accepted: %d images added; new %s version %s (%d training images)",
        outcome["name"],
        outcome["n_images"],
        spec.title,
        manifest["id"],
        manifest["n_train"],
    )
    if in_run():
        emit_event(
            event="digitgen.data.changed",
            resource={"prefect.resource.id": f"digitgen.dataset.{spec.name}", "prefect.resource.name": spec.title},
            payload={
                "dataset": spec.name,
                "version": manifest["id"],
                "parent": manifest["parent"],
                "batch": outcome["name"],
                "n_images": outcome["n_images"],
                "n_train": manifest["n_train"],
            },
        )
    if consume:  # from incoming/: keep the original files beside the data, out of the inbox
        _place_dir(Path(batch_folder), dataset_dir(config.data_root, spec) / "accepted" / outcome["name"], move=True)
    return manifest


@task(cache_policy=NONE)
def list_incoming(config: PipelineConfig, every_dataset: bool = False) -> list[tuple[str, str]]:
    """(dataset, batch folder) for each batch waiting in `<data root>/<dataset>/incoming/` (of every dataset, or of
    `config.dataset`), oldest first. Hidden names are skipped: a batch copied under `.name` is still arriving."""
    found = []
    for name in DATASETS if every_dataset else [config.dataset]:
        inbox = incoming_dir(config.model_copy(update={"dataset": name}))
        inbox.mkdir(parents=True, exist_ok=True)
        batches = [p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith(".")]
        found += [(name, str(p)) for p in sorted(batches, key=lambda p: (p.stat().st_mtime, p.name))]
        logger().info("%d new batch%s in %s", len(batches), "" if len(batches) == 1 else "es", inbox)
    return found


@task(cache_policy=NONE)
def set_aside(config: PipelineConfig, batch_folder: Path, error: BaseException) -> str:
    """Quarantine an inbox batch whose ingest failed for another reason than its checks, so it is not retried
    for ever; validation.json records the error."""
    failure = f"ingest failed: {type(error).__name__}: {error}"
    record = {"accepted": False, "name": Path(batch_folder).name, "failures": [failure]}
    return quarantine_batch.fn(config, Path(batch_folder), record, consume=True)


def refusal(outcome: dict, quarantined: str) -> BatchRefusedError:
    """The one error a refused batch raises: each failed expectation with its observed value."""
    reasons = "\n".join(f"  - {line}" for line in outcome.get("reasons") or outcome["failures"])
    lines = "\n".join(f"  - {line}" for line in outcome["failures"])
    return BatchRefusedError(
        f"batch {outcome['name']} refused:\n{reasons}\nIn detail, {len(outcome['failures'])} expectation"
        f"{'s' if len(outcome['failures']) != 1 else ''} failed:\n{lines}\n"
        f"It was quarantined in {quarantined} (with validation.json); data version {outcome['parent']} is unchanged."
    )
