"""Stage 4: test-set metrics for both models -> metrics.json and a table artifact."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from models.checkpoint import load_checkpoint
from models.io import write_json
from models.latent import codes
from models.metrics import ae_recon, iwae_nll, prior_mismatch, vae_terms
from tasks.common import logger, table_artifact
from tasks.data import tensors


@task(cache_policy=NONE)
def evaluate(config: PipelineConfig, run_dir: str, vae_run: dict, ae_run: dict) -> dict:
    """Score both models on the test set (nats per image, lower is better) and write metrics.json."""
    log = logger()
    train, test, _, device = tensors(config)
    torch.manual_seed(config.seed)
    vae = load_checkpoint(vae_run["checkpoint"], device)
    ae = load_checkpoint(ae_run["checkpoint"], device)
    terms = vae_terms(vae, test)
    nll, nll_se = iwae_nll(vae, test, k=config.is_samples)
    metrics = {
        "vae": {
            "test_recon_nats": terms["recon"],
            "test_kl_nats": terms["kl"],
            "test_neg_elbo_nats": terms["neg_elbo"],
            "test_nll_is_nats": nll,
            "test_nll_is_stderr": nll_se,
            "is_samples": config.is_samples,
            "prior_mismatch_nats": prior_mismatch(codes(vae, test)),
        },
        "ae": {
            "test_recon_nats": ae_recon(ae, test),
            "prior_mismatch_nats": prior_mismatch(codes(ae, test)),
        },
        "train_seconds": {"vae": vae_run["seconds"], "ae": ae_run["seconds"]},
        "n_train": int(train.shape[0]),
        "n_test": int(test.shape[0]),
        "epochs": config.epochs,
        "device": str(device),
        "history": {"vae": vae_run["history"], "ae": ae_run["history"]},
    }
    write_json(Path(run_dir) / "metrics.json", metrics)
    v, a = metrics["vae"], metrics["ae"]
    table_artifact(
        "vae-metrics",
        [
            {"metric": "VAE reconstruction (nats)", "value": round(v["test_recon_nats"], 2)},
            {"metric": "VAE KL (nats)", "value": round(v["test_kl_nats"], 2)},
            {"metric": "VAE negative ELBO (nats)", "value": round(v["test_neg_elbo_nats"], 2)},
            {"metric": f"VAE NLL, {config.is_samples} importance samples (nats)", "value": round(nll, 2)},
            {"metric": "AE reconstruction (nats)", "value": round(a["test_recon_nats"], 2)},
        ],
        f"Test metrics of run {config.run_name}, per image, lower is better",
    )
    log.info("VAE: -ELBO %.2f, NLL(k=%d) %.2f +- %.2f; AE recon %.2f nats/image",
             v["test_neg_elbo_nats"], config.is_samples, nll, nll_se, a["test_recon_nats"])  # fmt: skip
    return metrics
