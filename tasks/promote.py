"""The model gate: promote the new VAE only if its test NLL beats the champion's. The champion is the alias
`champion` of the dataset's registered model in MLflow (digitgen/registry/tracking.py)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from digitgen.config import TRAINING_SETTINGS, PipelineConfig
from digitgen.data.datasets import get_dataset
from digitgen.data.loading import dataset_fingerprint
from digitgen.figures.plots import png_data_uri, save_decisions
from digitgen.limits import CHAMPION, held
from digitgen.registry import locks, records, run_record, tracking
from digitgen.registry.gate import ChampionUnloadable, Decision, decide, import_json_record
from models.checkpoint import CheckpointError, load_checkpoint
from models.metrics import iwae_nll_per_image
from models.scores import RunMetrics
from models.train import autocast_dtype, measured, pick_device
from tasks.common import in_run, logger, markdown_artifact
from tasks.data import tensors
from tasks.run import release_run_folder
from tasks.track import log_results


def champion_path(config: PipelineConfig) -> Path:
    """The JSON champion record of the days before MLflow, imported once (one per dataset and kind of data)."""
    return records.json_record_path(config.out, get_dataset(config.dataset).champion_stem, config.binarize)


def registered_model(config: PipelineConfig) -> str:
    """One registered model per dataset and kind of data: likelihoods of grey levels and of binary images do not
    compare."""
    return tracking.model_name(config.dataset, config.binarize)


_RESCORED: dict[tuple, torch.Tensor] = {}  # champions re-scored by this process: the gate's figures, reused by promote


def not_a_candidate(config: PipelineConfig) -> str | None:
    """Why this run cannot challenge the champion, or None: a trial on part of the data compares with nothing."""
    limits = [
        f"--{k.replace('_', '-')} {getattr(config, k)}" for k in ("train_limit", "test_limit") if getattr(config, k)
    ]
    if limits:
        return (
            f"made with {' and '.join(limits)}, a trial on part of the data, not a candidate for champion: no "
            "decision is logged and no alert fires"
        )
    return None


def _challenge(config: PipelineConfig, run_dir: str, value: float, n_test: int, commit: bool) -> Decision:
    """The gate's decision on this run's VAE (see digitgen.registry.gate.decide)."""
    log = logger()
    # NLLs of one precision are compared: the challenger's (its evaluation's choice, measured with its model on a CPU
    # under 'auto'), and the champion re-scored in it
    device = pick_device(config.device)
    model = load_checkpoint(Path(run_dir) / "vae.pt") if measured(config.precision, device) else None
    precision = autocast_dtype(config.precision, device, model, config.batch_size)
    evaluation = {
        "is_samples": config.is_samples,
        "n_test": n_test,
        "seed": config.seed,
        "binarize": config.binarize,
        "dataset": config.dataset,
        "data": dataset_fingerprint(config.data_root, get_dataset(config.dataset)),
        "precision": str(precision or torch.float32).removeprefix("torch."),
    }
    per_image = Path(run_dir) / tracking.PER_IMAGE_NLL
    candidate = {
        "run_dir": str(Path(run_dir).resolve()),
        "run_name": config.run_name,
        "value": value,
        "evaluation": evaluation,
        "data_version": config.data_version,
        "margin": config.gate_margin,
        "per_image": torch.load(per_image, weights_only=True) if per_image.is_file() else None,
        "training": {k: getattr(config, k) for k in TRAINING_SETTINGS if k != "seed"},
    }
    store = tracking.Store.open(config.out, config.tracking_uri)
    name = registered_model(config)
    record = run_record.read_record(run_dir) or {}

    def rescore(champion: dict) -> torch.Tensor:
        key = (store.uri, name, champion["version"], json.dumps(evaluation, sort_keys=True))
        if key in _RESCORED:
            return _RESCORED[key]  # scored under these settings moments ago (by the gate task, for promote)
        log.info(
            "Re-scoring the champion %s (version %s) under this run's evaluation settings", name, champion["version"]
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                vae = load_checkpoint(store.download_version(name, champion["version"], Path(tmp)) / "vae.pt")
        except (CheckpointError, OSError, tracking.TrackingError, Exception) as e:  # MlflowException included
            raise ChampionUnloadable(
                f"the champion, {name} version {champion['version']} (run {champion['run_name']}), must be re-scored "
                f"under this run's evaluation settings, and its model cannot be loaded ({tracking._short(e)}); nothing "
                f"is promoted over a champion that could not be compared. {tracking.retire_hint(name)}"
            ) from None
        _, test, _, _ = tensors(config, with_train=False)
        torch.manual_seed(config.seed)
        _RESCORED[key] = iwae_nll_per_image(vae.to(test.device), test, k=config.is_samples, dtype=precision).cpu()
        return _RESCORED[key]

    def recorded(champion: dict) -> torch.Tensor | None:
        """The per-image NLLs the champion's run recorded (None for a champion registered before they were)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = store.version_file(name, champion["version"], tracking.PER_IMAGE_NLL, Path(tmp))
            return torch.load(path, weights_only=True) if path else None

    if not commit:
        return decide(store, name, record.get("run_id"), candidate, rescore, False, recorded)
    with locks.gate_lock(config.out):
        import_json_record(store, config.dataset, name, champion_path(config))
        return decide(store, name, record["run_id"], candidate, rescore, True, recorded)


@task(cache_policy=NONE)
def gate(config: PipelineConfig, run_dir: str, metrics: RunMetrics) -> Decision:
    """What the model gate will decide (nothing written yet): the report states it; `promote` commits it last."""
    why = not_a_candidate(config)
    if why:
        logger().info("Model gate: this run was %s", why)
        return Decision(candidate=False, promoted=False, why=why, challenger=metrics.vae.test_nll_is_nats)
    decision = _challenge(config, run_dir, metrics.vae.test_nll_is_nats, metrics.n_test, commit=False)
    (logger().warning if decision.reason else logger().info)("Model gate: %s", decision.verdict())
    return decision


@task(cache_policy=NONE)
def promote(config: PipelineConfig, run_dir: str, metrics: RunMetrics, planned: Decision | None = None) -> Decision:
    """The last step of a run: log it to MLflow, register the winner and move the alias `champion`, and emit the
    event. Only a run whose every other stage succeeded gets here, so a failed run never becomes champion. The
    decision is taken again under the lock (another run may have been promoted since `gate`); normally it is
    `planned`."""
    return finish_run(config, run_dir, metrics.vae.test_nll_is_nats, metrics.n_test, planned)


def finish_run(
    config: PipelineConfig, run_dir: str, value: float, n_test: int, planned: Decision | None = None
) -> Decision:
    """Log the complete run to MLflow and take the gate's decision (the `promote` task, and `digitgen promote RUN`
    for a run whose gate failed)."""
    log = logger()
    store, record = log_results(config, run_dir)
    why = not_a_candidate(config)
    if why:  # logged to MLflow as any run; the gate, its history and its alerts never see it
        log.info("Not a candidate for champion: this run was %s", why)
        store.finish(record["run_id"])
        run_record.write_record(run_dir, {**record, "finished": True})
        release_run_folder(run_dir)
        return Decision(candidate=False, promoted=False, why=why, challenger=value)
    with held(CHAMPION, "The model gate", log):  # read-compare-write, one run at a time across hosts
        decision = _challenge(config, run_dir, value, n_test, commit=True)
    if planned is not None and decision.promoted != planned.promoted:
        log.warning(
            "The champion changed while this run was reporting; the gate decided again: %s "
            "(the report's gate line is out of date)",
            decision.verdict(),
        )
    (log.warning if decision.reason else log.info)(
        "Model gate: %s%s",
        decision.verdict(done=True),
        f" ({decision.model} version {decision.version} is the champion)" if decision.promoted else "",
    )
    publish_champion(config, run_dir, store)
    store.finish(record["run_id"])
    run_record.write_record(run_dir, {**record, "finished": True})
    release_run_folder(run_dir)  # nothing is written into the folder after this
    if in_run():
        emit_event(
            event="digitgen.model.promoted" if decision.promoted else "digitgen.model.rejected",
            resource={
                "prefect.resource.id": "digitgen.model.vae",
                "prefect.resource.name": "digitgen VAE",
                "digitgen.dataset": config.dataset,
            },
            payload={**decision.model_dump(mode="json"), "run_name": config.run_name},
        )
    return decision


def publish_champion(config: PipelineConfig, run_dir: str, store: tracking.Store) -> None:
    """The keyed `champion` artifact (one per registered model: `champion`, `champion-binarized`,
    `champion-fashion-mnist`, ...), drawn from MLflow: the current champion, the gate's decisions and their plot."""
    if not in_run():
        return
    key, name = champion_path(config).stem, registered_model(config)
    champion, decisions = store.champion(name), store.decisions(config.dataset, name)
    lines = [f"# Champion: {get_dataset(config.dataset).title}" + (" (binarized)" if config.binarize != "none" else "")]
    if champion:
        lines += [
            f"**{champion['run_name']}**, test NLL {champion['value']:.2f} nats, promoted "
            f"{champion.get('promoted_at') or '?'}, data version {champion.get('data_version') or '-'}; "
            f"registered model `models:/{name}@{tracking.ALIAS}` (version {champion['version']}) in "
            f"{_shown(store.uri)}."
        ]
    else:
        lines += ["No champion yet."]
    if decisions:
        figure = save_decisions(Path(run_dir) / "champion-history.png", decisions, "test NLL, importance-sampled")
        # narrow columns first: the UI cuts a wide table off on the right
        lines += [
            "",
            f"![gate decisions]({png_data_uri(figure)})",
            "",
            "| run | NLL (nats) | decision | data version | champion then | decided |",
            "|---|---:|---|---|---|---|",
        ]
        for d in reversed(decisions[-30:]):
            then = "-" if d["champion_value"] is None else f"{d['champion_run']} {d['champion_value']:.2f}"
            lines.append(
                f"| {d['run_name']} | {d['value']:.2f} | {_decided(d)} | {d.get('data_version') or '-'} | "
                f"{then} | {d['decided_at'][:16].replace('T', ' ')} |"
            )
    markdown_artifact(key, "\n".join(lines), f"The current champion ({name}@{tracking.ALIAS}) and the gate's decisions")


def _decided(d: dict) -> str:
    if d["promoted"]:
        return "promoted"
    if d.get("reason"):
        return "rejected: the champion could not be re-scored"
    if d.get("replicate"):
        return "rejected: a replicate"
    if d.get("margin_nats") is not None:
        return f"rejected: margin {d['margin_nats']:.2f}"
    return "rejected"


def _shown(uri: str) -> str:
    """A tracking URI fit to show: without a password."""
    return re.sub(r"//[^/@]+@", "//", uri)
