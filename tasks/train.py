"""Stage 3: train the VAE and the AE, with a resumable checkpoint after every epoch."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from models.checkpoint import read_checkpoint, save_checkpoint
from models.nets import build, init_output_bias
from models.train import fit, measured, precision_probe, probe_cache
from tasks.common import Progress, logger, table_artifact
from tasks.data import tensors
from tasks.results import Trained


def _latest(ckpt_dir: Path, kind: str) -> Path | None:
    """The newest complete epoch checkpoint of `kind`, if any."""
    found = sorted(ckpt_dir.glob(f"{kind}-epoch-*.pt"))
    return found[-1] if found else None


def train_model(kind: str, config: PipelineConfig, run_dir: str) -> Trained:
    """Train the `kind` model ("vae" or "ae") in `run_dir`, from its newest epoch checkpoint there if any."""
    log = logger()
    final = Path(run_dir) / f"{kind}.pt"
    ckpt_dir = Path(run_dir) / "checkpoints"
    if final.exists():  # an interrupted run that had finished this model already
        state = read_checkpoint(final)
        log.info("%s already trained in this run folder: %s", kind.upper(), final)
        return Trained(checkpoint=str(final), history=state["history"], seconds=state.get("seconds", 0.0))
    train, test, _, device = tensors(config)
    torch.manual_seed(config.seed)
    model = build(config.model_arch(kind)).to(device)
    init_output_bias(model, train.mean(0))  # the untrained decoder draws the mean digit: a faster start
    latest = _latest(ckpt_dir, kind)
    resume = read_checkpoint(latest) if latest else None  # on the CPU: RNG states must stay there
    settings = config.model_dump(mode="json", exclude={"resume"})
    started = time.perf_counter() - (resume.get("seconds", 0.0) if resume else 0.0)
    if resume:
        log.info("Resuming %s from %s (epoch %d of %d)", kind.upper(), latest, resume["epoch"], config.epochs)
    log.info(
        "Training %s on %d images (%s, %d epochs, batch %d)",
        kind.upper(),
        len(train),
        device,
        config.epochs,
        config.batch_size,
    )
    if measured(config.precision, device):  # what fit() will choose: logged with its figures
        probe = precision_probe(model, config.batch_size)
        log.info(
            "%s precision: %s, the faster of this machine's training steps (float32 %.2f ms, bfloat16 %.2f ms; %s)",
            kind.upper(),
            {"fp32": "float32", "bf16": "bfloat16"}[probe["choice"]],
            probe["fp32"] * 1e3,
            probe["bf16"] * 1e3,
            "measured earlier, " + str(probe_cache()) if probe["cached"] else "measured now",
        )

    last = [time.perf_counter()]
    progress = Progress(f"{kind.upper()} training: share of {config.epochs} epochs done", key=f"{kind}-training")
    progress.update((resume["epoch"] if resume else 0) / config.epochs)

    def on_epoch(record: dict, state: dict) -> None:
        path = ckpt_dir / f"{kind}-epoch-{record['epoch']:03d}.pt"
        save_checkpoint(path, {**state, "config": settings, "seconds": time.perf_counter() - started})
        for old in ckpt_dir.glob(f"{kind}-epoch-*.pt"):  # keep only the newest complete epoch
            if old != path:
                old.unlink(missing_ok=True)
        log.info(
            "%s epoch %d/%d: train %.2f, test %.2f nats/image (%.1f s this epoch)",
            kind.upper(),
            record["epoch"],
            config.epochs,
            record["train_loss"],
            record["test_loss"],
            time.perf_counter() - last[0],
        )
        last[0] = time.perf_counter()
        progress.update(record["epoch"] / config.epochs)

    history = fit(
        model,
        train,
        test,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        beta=config.beta if model.has_prior else 0.0,
        seed=config.seed,
        on_epoch=on_epoch,
        progress=config.progress,
        resume=resume,
        precision=config.precision,
        binarize=config.binarize == "dynamic",
        kl_warmup=config.kl_warmup if model.has_prior else 0.0,
    )
    seconds = time.perf_counter() - started
    save_checkpoint(
        final,
        {
            "arch": model.arch(),
            "model": model.state_dict(),
            "epoch": config.epochs,
            "config": settings,
            "history": history,
            "seconds": seconds,
        },
    )
    log.info("%s trained in %.1f s -> %s", kind.upper(), seconds, final)
    table_artifact(
        f"{kind}-epochs",
        [{k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in r.items()} for r in history],
        f"{kind.upper()} losses per epoch (nats per image)",
    )
    return Trained(checkpoint=str(final), history=history, seconds=seconds)


@task(cache_policy=NONE)
def train_vae(config: PipelineConfig, run_dir: str) -> Trained:
    """Train the VAE: BCE + beta * KL."""
    return train_model("vae", config, run_dir)


@task(cache_policy=NONE)
def train_ae(config: PipelineConfig, run_dir: str) -> Trained:
    """Train the AE: BCE alone."""
    return train_model("ae", config, run_dir)
