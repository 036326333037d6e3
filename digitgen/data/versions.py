"""Dataset versions: the official archives plus accepted batches, each version an immutable manifest.

Layout under `<data root>/<dataset>/`:
    versions/<id>.json   a manifest: the base archives' md5s and every accepted batch (checksum, images, when)
    batches/<sha>.pt     an accepted batch as tensors {"images": uint8 [N, 28, 28], "labels": int64 [N]}
A version's id is derived from its content (`v<number of batches>-<hash>`), so the same data always has the same id.
The versions form a chain: each accepted batch appends to the newest one. Writes are atomic and take a lock, so a
crash leaves the previous version intact and concurrent ingests queue.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

from digitgen.data.datasets import DatasetSpec
from digitgen.errors import DigitgenError
from digitgen.io import atomic_path, locked, write_json

if TYPE_CHECKING:
    import torch  # imported where tensors are handled: listing versions needs no torch


class VersionError(DigitgenError, ValueError):
    """A dataset version is unknown, or its files do not match its manifest."""


def dataset_dir(root: str | Path, spec: DatasetSpec) -> Path:
    """`<data root>/<dataset>/`: versions, accepted batches, incoming/ and quarantine/ of one dataset."""
    return Path(root) / spec.name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version_id(spec: DatasetSpec, batches: list[dict], base: dict | None = None) -> str:
    """`v<batches>-<hash of the content>`; `base`: the base archives' md5s (default: the official ones)."""
    base = spec.files if base is None else base
    content = json.dumps({"dataset": spec.name, "base": base, "batches": [b["sha256"] for b in batches]})
    return f"v{len(batches)}-{_sha256(content.encode())[:10]}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def manifest_problem(spec: DatasetSpec, path: Path, manifest) -> str | None:
    """What is wrong with a version manifest read from `path`, or None. Its id is derived again from its content (the
    base archives and its batches' checksums), so a batch dropped or altered by hand is caught."""
    try:
        batches = manifest["batches"]
        shas = [b["sha256"] for b in batches]
        added = sum(int(b["n_images"]) for b in batches)
        names = [str(b["name"]) for b in batches]
        n_train, created = int(manifest["n_train"]), str(manifest["created"])
    except (KeyError, TypeError, ValueError) as e:
        return f"is malformed ({type(e).__name__}: {e})"
    if len(set(shas)) != len(shas) or len(names) != len(shas) or not created:
        return "is malformed (a batch listed twice, or no date)"
    if not isinstance(manifest.get("base"), dict):
        return "is malformed (no base archives)"
    derived = _version_id(spec, batches, manifest["base"])  # the listing needs no torchvision for the official md5s
    if manifest.get("id") != derived or path.stem != derived:
        return f"does not match its content (its batches make version {derived}): it was edited by hand"
    if manifest.get("dataset") != spec.name or n_train != int(manifest.get("base_images", -1)) + added:
        return "does not match its content (dataset or image count): it was edited by hand"
    return None


def read_versions(root: str | Path, spec: DatasetSpec) -> tuple[list[dict], list[str]]:
    """Every sound version manifest, the base first and the newest last (creating the base version if needed), and
    one line for each manifest that is unreadable or does not match its content."""
    folder = dataset_dir(root, spec) / "versions"
    if not folder.is_dir() or not any(folder.glob("v*.json")):
        _ensure_base(root, spec)
    manifests, problems = [], []
    for path in sorted(folder.glob("v*.json")):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"version manifest {path} is unreadable ({type(e).__name__}); restore it or delete it")
            continue
        problem = manifest_problem(spec, path, manifest)
        if problem:
            problems.append(f"version manifest {path} {problem}; restore it or delete it")
        else:
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: (len(m["batches"]), m["created"])), problems


def list_versions(root: str | Path, spec: DatasetSpec) -> list[dict]:
    """Every version's manifest, the base first and the newest last (creating the base version if needed); a
    manifest that is unreadable or does not match its content stops whatever would train on or add to the chain."""
    manifests, problems = read_versions(root, spec)
    if problems:
        raise VersionError(problems[0])
    for manifest in manifests:
        if manifest["base"] != spec.files:
            raise VersionError(
                f"version {manifest['id']} of {spec.title} is built on other archives than the "
                f"official ones; move {dataset_dir(root, spec)} aside and ingest its batches again"
            )
    return manifests


def _ensure_base(root: str | Path, spec: DatasetSpec) -> dict:
    base = {
        "id": _version_id(spec, []),
        "dataset": spec.name,
        "created": _now(),
        "parent": None,
        "base": spec.files,
        "base_images": spec.n_train,
        "batches": [],
        "n_train": spec.n_train,
    }
    path = dataset_dir(root, spec) / "versions" / f"{base['id']}.json"
    with locked(path):
        if not path.exists():
            write_json(path, base)
    return json.loads(path.read_text())


def newest_version(root: str | Path, spec: DatasetSpec) -> dict:
    return list_versions(root, spec)[-1]


def get_version(root: str | Path, spec: DatasetSpec, version_id: str | None) -> dict:
    """The manifest of `version_id` (None: the newest); a clear error listing the known ids otherwise."""
    versions = list_versions(root, spec)
    if version_id is None:
        return versions[-1]
    for manifest in versions:
        if manifest["id"] == version_id:
            return manifest
    known = ", ".join(m["id"] for m in versions)
    raise VersionError(
        f"{spec.title} has no data version {version_id!r} in {root}; known versions: {known} (see `digitgen versions`)"
    )


def _batch_file(root: str | Path, spec: DatasetSpec, sha: str) -> Path:
    return dataset_dir(root, spec) / "batches" / f"{sha}.pt"


def _batch_bytes(images: torch.Tensor, labels: torch.Tensor) -> bytes:
    import torch

    return images.contiguous().numpy().tobytes() + labels.to(torch.int64).contiguous().numpy().tobytes()


def batch_sha(images: torch.Tensor, labels: torch.Tensor) -> str:
    """The identity of a batch's content (its images and labels, in order), as manifests record it."""
    import torch

    return _sha256(_batch_bytes(images.to(torch.uint8), labels.to(torch.int64)))


def version_holding(root: str | Path, spec: DatasetSpec, sha: str) -> dict | None:
    """The newest version, if it already holds the batch with content `sha` (an ingest that committed before dying)."""
    newest = newest_version(root, spec)
    return newest if any(b["sha256"] == sha for b in newest["batches"]) else None


def load_batch(root: str | Path, spec: DatasetSpec, entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """An accepted batch's (images uint8 [N, 28, 28], labels int64 [N]), checked against its manifest entry."""
    import torch

    path = _batch_file(root, spec, entry["sha256"])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = state["images"], state["labels"]
    except Exception as e:  # missing, truncated, or not our file
        raise VersionError(
            f"batch {entry['name']!r} ({path}) cannot be read ({type(e).__name__}); the data version "
            f"that holds it cannot be used. {repair_hint(root, spec, entry)}"
        ) from None
    if batch_sha(images, labels) != entry["sha256"]:
        raise VersionError(
            f"batch {entry['name']!r} ({path}) does not match its checksum in the version manifest; "
            f"it was changed after it was accepted. {repair_hint(root, spec, entry)}"
        )
    return images, labels


def repair_hint(root: str | Path, spec: DatasetSpec, entry: dict) -> str:
    """How to repair a damaged batch file: ingest the same batch again (its folder from the inbox is kept under
    accepted/), which rewrites the file; or train on an older version."""
    kept = dataset_dir(root, spec) / "accepted" / entry["name"]
    folder = shlex.quote(str(kept)) if kept.is_dir() else f"<the folder of batch {entry['name']}>"
    return (
        f"Repair it by ingesting the same batch again: `digitgen ingest {folder} --dataset {spec.name}` "
        "(or train on an older version with --data-version)"
    )


def _intact(path: Path, sha: str) -> bool:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return batch_sha(state["images"], state["labels"]) == sha
    except Exception:  # missing, truncated, altered
        return False


def version_train_set(root, spec: DatasetSpec, manifest: dict, base_images, base_labels, limit: int | None = None):
    """The version's training set: the first `limit` (default all) base images, then every batch, in order."""
    import torch

    parts = [(base_images[:limit], base_labels[:limit])]
    parts += [load_batch(root, spec, entry) for entry in manifest["batches"]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def add_batch(
    root: str | Path,
    spec: DatasetSpec,
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    source_checksum: str,
    checked_against: str | None = None,
) -> dict:
    """Append an accepted batch to the newest version; return the new version's manifest.

    The batch tensors are written first, then the manifest, each atomically, under the dataset's lock: a crash at
    any point leaves the previous version as it was, and the same batch ingested again completes the job (a batch
    the newest version already holds returns that version). `checked_against`: the version the batch was checked
    against; if another batch was added since, the checks are stale and the batch is refused.
    """
    import torch

    images, labels = images.to(torch.uint8).contiguous(), labels.to(torch.int64).contiguous()
    sha = batch_sha(images, labels)
    with locked(dataset_dir(root, spec) / "versions" / "chain"):
        parent = newest_version(root, spec)
        held = any(b["sha256"] == sha for b in parent["batches"])
        if not held and checked_against is not None and parent["id"] != checked_against:
            raise VersionError(
                f"{spec.title} gained version {parent['id']} while batch {name!r} was checked against "
                f"{checked_against}; ingest the batch again to check it against the new data"
            )
        path = _batch_file(root, spec, sha)
        if not _intact(path, sha):  # new, or a held batch's file damaged since: the same batch again repairs it
            with atomic_path(path) as tmp:
                torch.save({"images": images, "labels": labels}, tmp)
        if held:
            return parent
        counts = torch.bincount(labels, minlength=spec.n_classes).tolist()
        entry = {
            "name": name,
            "sha256": sha,
            "source_sha256": source_checksum,
            "n_images": int(len(labels)),
            "class_counts": counts,
            "added_at": _now(),
        }
        batches = [*parent["batches"], entry]
        manifest = {
            "id": _version_id(spec, batches),
            "dataset": spec.name,
            "created": entry["added_at"],
            "parent": parent["id"],
            "base": spec.files,
            "base_images": spec.n_train,
            "batches": batches,
            "n_train": parent["n_train"] + entry["n_images"],
        }
        write_json(dataset_dir(root, spec) / "versions" / f"{manifest['id']}.json", manifest)
    return manifest


def lineage(manifest: dict) -> str:
    """One line on what a version holds: the base archives and each added batch."""
    if not manifest["batches"]:
        return f"version {manifest['id']}: the official archives alone ({manifest['n_train']:,} training images)"
    added = sum(b["n_images"] for b in manifest["batches"])
    batches = "; ".join(f"{b['name']} ({b['n_images']:,} images, {b['added_at']})" for b in manifest["batches"])
    return (
        f"version {manifest['id']}: the official archives plus {len(manifest['batches'])} "
        f"batch{'es' if len(manifest['batches']) != 1 else ''} ({added:,} images added: {batches}); "
        f"{manifest['n_train']:,} training images"
    )
