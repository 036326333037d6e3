"""The model gate: promote the new VAE only if its test NLL beats the champion's."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from digitgen.config import PipelineConfig
from digitgen.limits import CHAMPION, held
from models.checkpoint import CheckpointError, load_checkpoint
from models.data import dataset_fingerprint
from models.datasets import get_dataset
from models.metrics import iwae_nll
from models.plots import save_decisions
from models.registry import METRIC, challenge, read_champion, read_decisions
from models.scores import RunMetrics
from models.train import autocast_dtype, pick_device
from tasks.common import in_run, logger, markdown_artifact, png_data_uri
from tasks.data import tensors


def champion_path(config: PipelineConfig) -> Path:
    """One champion per dataset and kind of data: likelihoods of grey levels and of binary images do not compare."""
    name = get_dataset(config.dataset).champion_stem
    return config.out / (f"{name}.json" if config.binarize == "none" else f"{name}-binarized.json")


def _challenge(
    config: PipelineConfig, run_dir: str, metrics: RunMetrics, commit: bool, known: dict | None = None
) -> dict:
    """The gate's decision on this run's VAE (see models.registry.challenge); `known`: an earlier decision whose
    re-scored champion value may be reused."""
    log = logger()
    precision = autocast_dtype(config.precision, pick_device(config.device))  # NLLs of one precision compared
    evaluation = {"is_samples": config.is_samples, "n_test": metrics.n_test, "seed": config.seed,
                  "binarize": config.binarize, "dataset": config.dataset,
                  "data": dataset_fingerprint(config.data_root, get_dataset(config.dataset)),
                  "precision": str(precision or torch.float32).removeprefix("torch.")}  # fmt: skip
    candidate = {"run_dir": str(Path(run_dir).resolve()), "run_name": config.run_name,
                 "value": metrics.vae.test_nll_is_nats, "evaluation": evaluation,
                 "data_version": config.data_version}  # fmt: skip

    def rescore(champion: dict) -> float | None:
        if known and known.get("champion_run") == champion["run_name"] and known.get("champion") is not None:
            return known["champion"]  # scored under these settings moments ago
        log.info("Re-scoring the champion %s under this run's evaluation settings", champion["run_name"])
        try:
            vae = load_checkpoint(Path(champion["run_dir"]) / "vae.pt")
        except CheckpointError as e:
            log.warning("Champion %s cannot be re-scored (%s); the challenger takes its place", champion["run_name"], e)
            return None
        _, test, _, _ = tensors(config, with_train=False)
        torch.manual_seed(config.seed)
        dtype = autocast_dtype(config.precision, test.device)
        return iwae_nll(vae.to(test.device), test, k=config.is_samples, dtype=dtype)[0]

    return challenge(champion_path(config), candidate, rescore, commit=commit)


@task(cache_policy=NONE)
def gate(config: PipelineConfig, run_dir: str, metrics: RunMetrics) -> dict:
    """What the model gate will decide (nothing written yet): the report states it; `promote` commits it last."""
    decision = _challenge(config, run_dir, metrics, commit=False)
    logger().info("Model gate: %s", _verdict(decision))
    return decision


def _verdict(d: dict, done: bool = False) -> str:
    champion = "no champion yet" if d["champion"] is None else f"champion {d['champion_run']} {d['champion']:.2f} nats"
    if d.get("already_champion"):
        return f"this run is already the champion ({d['challenger']:.2f} nats)"
    action = ("promoted" if done else "promote") if d["promoted"] else "keep the champion"
    return f"{action}: challenger {d['challenger']:.2f} vs {champion}"


@task(cache_policy=NONE)
def promote(config: PipelineConfig, run_dir: str, metrics: RunMetrics, planned: dict | None = None) -> dict:
    """The last step of a run: record the winner in `champion_path(config)` under its lock and emit the event.

    Only a run whose every other stage succeeded gets here, so a failed run never becomes champion. The decision
    is taken again under the lock (another run may have been promoted since `gate`); normally it is `planned`.
    """
    log = logger()
    with held(CHAMPION, "The model gate", log):  # read-compare-write, one run at a time across hosts
        decision = _challenge(config, run_dir, metrics, commit=True, known=planned)
    if planned is not None and decision["promoted"] != planned["promoted"]:
        log.warning("The champion changed while this run was reporting; the gate decided again: %s "
                    "(the report's gate line is out of date)", _verdict(decision))  # fmt: skip
    log.info("Model gate: %s", _verdict(decision, done=True))
    publish_champion(config, run_dir)
    if in_run():
        emit_event(
            event="digitgen.model.promoted" if decision["promoted"] else "digitgen.model.rejected",
            resource={
                "prefect.resource.id": "digitgen.model.vae",
                "prefect.resource.name": "digitgen VAE",
                "digitgen.dataset": config.dataset,
            },
            payload={**decision, "run_name": config.run_name},
        )
    return decision


def publish_champion(config: PipelineConfig, run_dir: str) -> None:
    """The keyed `champion` artifact (one per champion record: `champion`, `champion-binarized`,
    `champion-fashion-mnist`, ...): the current champion, the gate's decisions and their plot."""
    if not in_run():
        return
    path = champion_path(config)
    champion, decisions = read_champion(path), read_decisions(path)
    lines = [f"# Champion: {get_dataset(config.dataset).title}" + (" (binarized)" if config.binarize != "none" else "")]
    if champion:
        lines += [f"**{champion['run_name']}**, test NLL {champion['value']:.2f} nats, promoted "
                  f"{champion.get('promoted_at', '?')}, data version {champion.get('data_version') or '-'}; "
                  f"model `{champion['run_dir']}/vae.pt`; record `{path}`."]  # fmt: skip
    else:
        lines += ["No champion yet."]
    if decisions:
        figure = save_decisions(Path(run_dir) / "champion-history.png", decisions, METRIC)
        lines += ["", f"![gate decisions]({png_data_uri(figure)})", "",
                  "| decided | run | NLL (nats) | champion then | decision | data version |", "|---|---|---:|---|---|---|"]  # fmt: skip
        for d in reversed(decisions[-30:]):
            then = "-" if d["champion_value"] is None else f"{d['champion_run']} {d['champion_value']:.2f}"
            lines.append(f"| {d['decided_at']} | {d['run_name']} | {d['value']:.2f} | {then} | "
                         f"{'promoted' if d['promoted'] else 'rejected'} | {d.get('data_version') or '-'} |")  # fmt: skip
    markdown_artifact(path.stem, "\n".join(lines), f"The current champion ({path.name}) and the gate's decisions")
