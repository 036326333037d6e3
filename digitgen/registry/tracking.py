"""MLflow keeps the record: every run is an MLflow run (its settings as params, both models' losses per epoch, every
number of metrics.json, the report, the figures and the checkpoints), and the champion is the `champion` alias of a
registered model per dataset (`digitgen-mnist`, `digitgen-fashion-mnist`; `...-binarized` for binarized runs, whose
likelihoods do not compare with grey-level ones). Prefect orchestrates and shows; MLflow's own UI compares runs.

The store is MLFLOW_TRACKING_URI (a team's `mlflow server`, with proxied artifacts so workers need no shared disk),
else SQLite at <out>/mlflow.db with artifacts under <out>/mlartifacts/ (`make mlflow` opens its UI). Every call names
its run and its store: nothing relies on MLflow's process-global "active run".

A model leaves the registry as the project's own files (vae.pt, ae.pt, samplers.pt, config.json), loaded by
`models.load_checkpoint`, which never unpickles code: no `mlflow.pytorch` model is ever logged or loaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

from digitgen.errors import DigitgenError
from digitgen.registry.locks import writing
from digitgen.registry.new_store import seed_from_template
from digitgen.registry.run_record import flatten, is_number

ALIAS = "champion"
METRIC = "test_nll_is_nats"  # the gate's metric, lower is better
PER_IMAGE_NLL = "vae-test-nll.pt"  # the VAE's importance-sampled NLL of each test image: the gate pairs them
MODEL_FILES = (
    "vae.pt",
    "ae.pt",
    "samplers.pt",
    "config.json",
    PER_IMAGE_NLL,
)  # a registered version's files: a run folder's own
FIGURES = ("*.png",)
# A tracking server that is down should fail a call in seconds, not after MLflow's default 7 retries with backoff.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # downloads: no bars in logs, one-line errors
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class TrackingError(DigitgenError, RuntimeError):
    """The tracking store cannot be reached, or the registry holds something the gate cannot use."""


def store_uri(out: Path, tracking_uri: str | None) -> str:
    """The tracking URI: the one given (MLFLOW_TRACKING_URI), else SQLite at <out>/mlflow.db."""
    return tracking_uri or f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def model_name(dataset: str, binarize: str = "none") -> str:
    """The registered model of a dataset's champions: digitgen-mnist, digitgen-mnist-binarized, ..."""
    return f"digitgen-{dataset}" + ("" if binarize == "none" else "-binarized")


def experiment_name(dataset: str) -> str:
    return f"digitgen-{dataset}"


class Store:
    """An MLflow client on one store (tracking and registry), with what digitgen asks of it."""

    def __init__(self, uri: str, out: Path):
        from mlflow import MlflowClient

        self.uri, self.out = uri, Path(out)
        with writing(uri):  # a new SQLite store creates its tables (both stores') now, one process at a time
            seed_from_template(uri)  # a new local store: a copy of the machine's empty one
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            if not is_remote(uri):
                self.client.search_experiments(max_results=1)
                self.client.search_registered_models(max_results=1)

    @classmethod
    def open(cls, out: Path, tracking_uri: str | None) -> Store:
        """The store for runs under `out`, checked: a one-line TrackingError when it cannot be reached."""
        uri = store_uri(out, tracking_uri)
        if is_remote(uri):
            require_reachable(uri)
        try:
            store = cls(uri, out)
            if is_remote(uri):
                store.client.search_experiments(max_results=1)
        except Exception as e:
            raise TrackingError(
                f"the MLflow tracking store {uri} cannot be used ({_short(e)}); {_hint(uri, out)}"
            ) from None
        return store

    # experiments and runs

    def experiment(self, dataset: str) -> str:
        """The id of the dataset's experiment, created on first use (SQLite: artifacts under <out>/mlartifacts/)."""
        from mlflow.exceptions import MlflowException

        name = experiment_name(dataset)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None if is_remote(self.uri) else (self.out / "mlartifacts" / name).resolve().as_uri()
        try:
            with writing(self.uri):
                return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another run created it just now
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def start_run(self, dataset: str, run_name: str, params: dict, tags: dict) -> str:
        from mlflow.entities import Param

        with writing(self.uri):
            run = self.client.create_run(self.experiment(dataset), run_name=run_name, tags=_clean(tags))
            flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(flat), 100):
                self.client.log_batch(run.info.run_id, params=flat[i : i + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        self.log_steps(run_id, [(k, v, step) for k, v in values.items()])

    def log_steps(self, run_id: str, entries: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s)) for k, v, s in entries if is_number(v)]
        with writing(self.uri):
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        with writing(self.uri):
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in _clean(tags).items()])

    def log_files(self, run_id: str, files: list[Path], artifact_path: str | None = None) -> None:
        with writing(self.uri):
            for f in files:
                self.client.log_artifact(run_id, str(f), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        with writing(self.uri):
            self.client.set_terminated(run_id, status)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """Where the run is in MLflow's UI (the local store's UI: `make mlflow`, on port 5000)."""
        base = self.uri.rstrip("/") if is_remote(self.uri) else "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"

    # the registry

    def champion(self, name: str) -> dict | None:
        """The version the alias `champion` of `name` points at, with the gate's record of it; None when none."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(name, ALIAS)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        tags = version.tags
        try:
            record = {
                "run_name": tags["digitgen.run_name"],
                "value": float(tags["digitgen.value"]),
                "evaluation": json.loads(tags["digitgen.evaluation"]),
            }
        except (KeyError, ValueError) as e:
            raise TrackingError(
                f"{name} version {version.version}, the champion, lacks the gate's tags ({e}): it was "
                f"not registered by digitgen. {retire_hint(name)}"
            ) from None
        if not math.isfinite(record["value"]):  # NaN would lose to every challenger, inf to none
            raise TrackingError(
                f"{name} version {version.version}, the champion, records a test NLL of "
                f"{tags['digitgen.value']}: its record is damaged. {retire_hint(name)}"
            )
        return {
            **record,
            "version": str(version.version),
            "run_id": version.run_id,
            "source": version.source,
            "name": name,
            "run_dir": tags.get("digitgen.run_dir"),
            "data_version": tags.get("digitgen.data_version"),
            "promoted_at": tags.get("digitgen.promoted_at"),
            "training": json.loads(tags["digitgen.training"]) if tags.get("digitgen.training") else None,
        }

    def register(self, name: str, run_id: str, tags: dict) -> str:
        """A new version of `name` from the run's model/ files; the alias moves to it. Returns the version."""
        from mlflow.exceptions import MlflowException

        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        with writing(self.uri):
            try:
                self.client.create_registered_model(
                    name,
                    description="digitgen VAE champions: the alias "
                    "`champion` is the current one (the model gate moves it)",
                )
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self.client.create_model_version(name, source, run_id=run_id, tags=_clean(tags))
            self.client.set_registered_model_alias(name, ALIAS, version.version)
        return str(version.version)

    def retire(self, name: str) -> dict | None:
        """Remove the alias `champion` of `name` (the version stays, tagged retired); returns what it pointed at."""
        champion = self.champion(name)
        if champion is not None:
            with writing(self.uri):
                self.client.set_model_version_tag(name, champion["version"], "digitgen.retired_at", _now())
                self.client.delete_registered_model_alias(name, ALIAS)
        return champion

    def download_version(self, name: str, version: str, dst: Path) -> Path:
        """The files of a registered version (vae.pt, ae.pt, samplers.pt, config.json) under `dst`."""
        from mlflow.artifacts import download_artifacts

        source = self.client.get_model_version_download_uri(name, version)  # models:/ resolved on this registry
        found = download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=self.uri)
        return Path(found)

    def version_file(self, name: str, version: str, file: str, dst: Path) -> Path | None:
        """One file of a registered version under `dst`, or None where the version holds no such file (a version
        registered before that file was logged)."""
        from mlflow.artifacts import download_artifacts, list_artifacts

        source = self.client.get_model_version_download_uri(name, version).rstrip("/")
        if file not in {Path(f.path).name for f in list_artifacts(artifact_uri=source, tracking_uri=self.uri)}:
            return None
        return Path(download_artifacts(artifact_uri=f"{source}/{file}", dst_path=str(dst), tracking_uri=self.uri))

    def decisions(self, dataset: str, name: str) -> list[dict]:
        """The gate's decisions on `name`, oldest first: those of imported JSON records, then each gated run's."""
        found = []
        imported = self._registered_tag(name, "digitgen.imported_decisions_run")
        if imported:
            from mlflow.artifacts import download_artifacts

            with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as tmp:
                path = download_artifacts(
                    run_id=imported, artifact_path="decisions.json", dst_path=tmp, tracking_uri=self.uri
                )
                found += json.loads(Path(path).read_text())
        runs = self.client.search_runs(
            [self.experiment(dataset)], f"tags.`digitgen.registry.gate.model` = '{name}'", max_results=500
        )
        for run in runs:
            t = run.data.tags
            value = t.get("digitgen.registry.gate.champion_value")
            found.append(
                {
                    "run_name": run.info.run_name,
                    "value": float(t["digitgen.registry.gate.value"]),
                    "promoted": t["digitgen.registry.gate.decision"] == "promoted",
                    "champion_run": t.get("digitgen.registry.gate.champion_run") or None,
                    "champion_value": float(value) if value else None,
                    "data_version": t.get("digitgen.data_version"),
                    "decided_at": t["digitgen.registry.gate.decided_at"],
                    "version": t.get("digitgen.registry.gate.version"),
                    "reason": t.get("digitgen.registry.gate.reason"),
                    "margin_nats": _float(t.get("digitgen.registry.gate.margin_nats")),
                    "difference_nats": _float(t.get("digitgen.registry.gate.difference_nats")),
                    "replicate": t.get("digitgen.registry.gate.replicate") == "true",
                }
            )
        return sorted(found, key=lambda d: d["decided_at"])

    def _registered_tag(self, name: str, key: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name).tags.get(key)
        except MlflowException:
            return None


def _float(text: str | None) -> float | None:
    return float(text) if text else None


def require_reachable(uri: str) -> None:
    """One line, in seconds, when a tracking server does not answer its /health (http and https servers; other
    stores, such as databricks, answer for themselves)."""
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as reply:
            reply.read()
    except OSError as e:
        raise TrackingError(
            f"the MLflow tracking server {uri} is not reachable ({_short(e)}); start it, or unset "
            "MLFLOW_TRACKING_URI to track into <out>/mlflow.db (`make mlflow` shows that store)"
        ) from None


def retire_hint(name: str) -> str:
    dataset = name.removeprefix("digitgen-").removesuffix("-binarized")
    flag = " --binarized" if name.endswith("-binarized") else ""
    return (
        f"Retire it with `digitgen retire --dataset {dataset}{flag}` (removes the alias `champion`; the version "
        f"stays in the registry and the next run that passes the gate becomes champion)."
    )


def _hint(uri: str, out: Path) -> str:
    if is_remote(uri):
        return "check the server, or unset MLFLOW_TRACKING_URI to track into <out>/mlflow.db"
    return f"check that {out} is writable, or set MLFLOW_TRACKING_URI to a tracking server"


def _short(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _now() -> str:
    """An ISO time to the millisecond (decisions in one second keep their order)."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _clean(tags: dict) -> dict:
    return {k: str(v)[:5000] for k, v in tags.items() if v is not None}
