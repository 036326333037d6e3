"""The model gate: promote the new VAE only if its test NLL beats the champion's."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from digitgen.config import PipelineConfig
from models.checkpoint import CheckpointError, load_checkpoint
from models.data import dataset_fingerprint
from models.datasets import get_dataset
from models.metrics import iwae_nll
from models.registry import challenge
from tasks.common import in_run, logger
from tasks.data import tensors


def champion_path(config: PipelineConfig) -> Path:
    """One champion per dataset and kind of data: likelihoods of grey levels and of binary images do not compare."""
    name = get_dataset(config.dataset).champion_stem
    return config.out / (f"{name}.json" if config.binarize == "none" else f"{name}-binarized.json")


@task(cache_policy=NONE)
def promote(config: PipelineConfig, run_dir: str, metrics: dict) -> dict:
    """Compare with the champion on test NLL; record the winner in `champion_path(config)`; emit an event."""
    log = logger()
    evaluation = {"is_samples": config.is_samples, "n_test": metrics["n_test"], "seed": config.seed,
                  "binarize": config.binarize, "dataset": config.dataset,
                  "data": dataset_fingerprint(config.data_root, get_dataset(config.dataset))}  # fmt: skip
    candidate = {"run_dir": str(Path(run_dir).resolve()), "run_name": config.run_name,
                 "value": metrics["vae"]["test_nll_is_nats"], "evaluation": evaluation,
                 "data_version": config.data_version}  # fmt: skip

    def rescore(champion: dict) -> float | None:
        try:
            vae = load_checkpoint(Path(champion["run_dir"]) / "vae.pt")
        except CheckpointError as e:
            log.warning("Champion %s cannot be re-scored (%s); the challenger takes its place", champion["run_name"], e)
            return None
        _, test, _, _ = tensors(config, with_train=False)
        torch.manual_seed(config.seed)
        return iwae_nll(vae.to(test.device), test, k=config.is_samples)[0]

    decision = challenge(champion_path(config), candidate, rescore)
    verdict = "promoted" if decision["promoted"] else "kept the champion"
    log.info("Model gate: %s (challenger %.2f vs champion %s nats)", verdict, decision["challenger"],
             "none" if decision["champion"] is None else f"{decision['champion']:.2f}")  # fmt: skip
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
