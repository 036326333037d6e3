"""Stage 4: test-set metrics for both models -> metrics.json and a table artifact."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from digitgen.data.datasets import get_dataset
from digitgen.data.loading import load_dataset
from digitgen.io import atomic_path
from digitgen.registry.tracking import PER_IMAGE_NLL
from models.checkpoint import load_checkpoint
from models.classifier import predict
from models.latent import codes, decode_images
from models.metrics import ae_recon, iwae_nll_per_image, prior_mismatch, standard_error, vae_terms
from models.quality import active_units, class_histogram, frechet_distance, inception_score, knn_accuracy
from models.samplers import SAMPLERS, draw_codes, load_mixtures
from models.scores import (
    Histories,
    Judge,
    ModelMetrics,
    OnDemandScores,
    PerModel,
    RealDigits,
    RunMetrics,
    SamplerScores,
    VAEMetrics,
    metric_context,
    metric_line,
    metric_rows,
)
from models.train import autocast_dtype
from tasks.classifier import load_judge
from tasks.common import logger, table_artifact
from tasks.data import tensors, train_set
from tasks.results import JudgeModel, Samplers, Trained

ON_DEMAND_PER_CLASS = 500  # images drawn for each class to measure --digit fidelity (fewer for small quality_samples)


def sample_quality(model, judge, real_feats, z: torch.Tensor) -> dict:
    """Inception score, Fréchet distance to the test images' features and class shares of the codes `z`, decoded."""
    probs, feats = predict(judge, decode_images(model, z))
    return {
        "inception_score": inception_score(probs),
        "frechet_distance": frechet_distance(feats, real_feats),
        "class_histogram": [round(p, 4) for p in class_histogram(probs)],
    }


def sampler_quality(model, mixtures, judge, real_feats, n: int, seed: int, device) -> dict:
    """SamplerScores of every sampler, each from its own generator seeded alike (the prior's draws are those of the
    top-level scores)."""
    out = {}
    for name in SAMPLERS:
        if name != "prior" and mixtures is None:
            continue
        z, _ = draw_codes(name, n, model, torch.Generator().manual_seed(seed), mixtures)
        out[name] = SamplerScores(**sample_quality(model, judge, real_feats, z.to(device))).model_dump()
    return out


def _spread(feats: torch.Tensor, limit: int = 500) -> float:
    """Mean pairwise distance between (at most `limit`) feature vectors."""
    feats = feats[:limit].double()
    n = len(feats)
    return (torch.cdist(feats, feats).sum() / (n * (n - 1))).item() if n > 1 else 0.0


def on_demand_quality(model, mixtures, judge, test_feats, test_labels, per_class: int, seed: int, device) -> dict:
    """For each class: the share of images drawn for it that the judge calls that class, and their variety."""
    g = torch.Generator().manual_seed(seed)
    fidelity, diversity = [], []
    for c in range(mixtures.n_classes):
        z, _ = draw_codes("gmm", per_class, model, g, mixtures, cls=c)
        probs, feats = predict(judge, decode_images(model, z.to(device)))
        fidelity.append(round((probs.argmax(1) == c).double().mean().item(), 4))
        real = _spread(test_feats[test_labels.to(test_feats.device) == c])
        diversity.append(round(_spread(feats) / real, 3) if real > 0 else 0.0)
    return OnDemandScores(sampler="gmm", per_class=per_class, fidelity=fidelity, diversity=diversity).model_dump()


def latent_quality(model, train, train_labels, test, test_labels) -> dict:
    """5-NN accuracy of test labels from the codes, and the active units of the code."""
    train_codes, test_codes = codes(model, train), codes(model, test)
    return {
        "knn_accuracy": knn_accuracy(train_codes, train_labels, test_codes, test_labels),
        "active_units": active_units(test_codes),
    }


def metrics_table(metrics: RunMetrics, context: dict) -> list[dict]:
    """The `vae-metrics` table artifact: a row per metric of models.scores.METRICS, then the samples of each fitted
    sampler (the report's sampler section)."""
    rows = [{"metric": name, "VAE": vae, "AE": ae} for name, vae, ae in metric_rows(metrics, context)]
    v, a = metrics.vae.samplers, metrics.ae.samplers
    rows += [
        {
            "metric": f"Samples from {name}: Inception score, Fréchet distance",
            "VAE": f"{v[name].inception_score:.2f}, {v[name].frechet_distance:.1f}",
            "AE": f"{a[name].inception_score:.2f}, {a[name].frechet_distance:.1f}",
        }
        for name in v
        if name != "prior" and name in a
    ]
    return rows


@task(cache_policy=NONE)
def evaluate(
    config: PipelineConfig,
    run_dir: str,
    vae_run: Trained,
    ae_run: Trained,
    judge_run: JudgeModel,
    samplers: Samplers | None = None,
) -> RunMetrics:
    """Score both models on the test set (nats per image, lower is better; sample and latent quality) -> metrics.json."""
    log = logger()
    _, test, test_labels, device = tensors(config, with_train=False)
    data = load_dataset(config.data_root, get_dataset(config.dataset))
    train, train_labels = train_set(config)
    train = train.unsqueeze(1).to(device)  # uint8: codes() scales it batch by batch
    torch.manual_seed(config.seed)
    vae = load_checkpoint(vae_run.checkpoint, device)
    ae = load_checkpoint(ae_run.checkpoint, device)
    judge, real_probs, real_feats = load_judge(judge_run.checkpoint, data.test_images, device)
    terms = vae_terms(vae, test)
    per_image = iwae_nll_per_image(
        vae, test, k=config.is_samples, dtype=autocast_dtype(config.precision, device, vae, config.batch_size)
    )
    nll, nll_se = per_image.mean().item(), standard_error(per_image)
    with atomic_path(Path(run_dir) / PER_IMAGE_NLL) as tmp:  # the model gate pairs them with the champion's
        torch.save(per_image.float().cpu(), tmp)
    mixtures = {
        kind: load_mixtures(samplers.path, kind) if samplers and samplers.path else None for kind in ("vae", "ae")
    }
    scored = {
        kind: sampler_quality(model, mixtures[kind], judge, real_feats, config.quality_samples, config.seed, device)
        for kind, model in (("vae", vae), ("ae", ae))
    }
    on_demand = (
        None
        if mixtures["vae"] is None
        else on_demand_quality(  # the generator people ask of
            vae,
            mixtures["vae"],
            judge,
            real_feats,
            data.test_labels,
            min(ON_DEMAND_PER_CLASS, max(20, config.quality_samples // 20)),
            config.seed,
            device,
        )
    )
    metrics = RunMetrics(
        vae=VAEMetrics(
            test_recon_nats=terms["recon"],
            test_kl_nats=terms["kl"],
            test_neg_elbo_nats=terms["neg_elbo"],
            test_nll_is_nats=nll,
            test_nll_is_stderr=nll_se,
            is_samples=config.is_samples,
            prior_mismatch_nats=prior_mismatch(codes(vae, test, sample=True)),  # the aggregate posterior
            **scored["vae"]["prior"],  # the keys of before: decoded N(0, I) draws
            **latent_quality(vae, train, train_labels, test, test_labels),
            samplers=scored["vae"],
            on_demand=on_demand,
        ),
        ae=ModelMetrics(
            test_recon_nats=ae_recon(ae, test),
            prior_mismatch_nats=prior_mismatch(codes(ae, test)),
            **scored["ae"]["prior"],
            **latent_quality(ae, train, train_labels, test, test_labels),
            samplers=scored["ae"],
        ),
        test_digits=RealDigits(inception_score=inception_score(real_probs)),
        classifier=Judge(test_accuracy=judge_run.test_accuracy),
        quality_samples=config.quality_samples,
        train_seconds=PerModel(vae=vae_run.seconds, ae=ae_run.seconds),
        dataset=config.dataset,
        data_version=config.data_version,
        n_train=int(train.shape[0]),
        n_test=int(test.shape[0]),
        epochs=config.epochs,
        device=str(device),
        history=Histories(vae=vae_run.history, ae=ae_run.history),
    )
    metrics.write(Path(run_dir) / "metrics.json")
    spec = get_dataset(config.dataset)
    context = metric_context(metrics, spec.classes, spec.items, config.prior, config.latent_dim)
    table_artifact(
        "vae-metrics",
        metrics_table(metrics, context),
        f"Test metrics of run {config.run_name}: nats per image, lower is better, unless noted",
    )
    log.info("%s", metric_line(metrics, context))
    return metrics
