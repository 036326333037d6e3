"""The training loop: in-memory tensors, shuffled index batches, no per-item Python, no host sync per step."""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from digitgen.errors import DigitgenError
from digitgen.io import cache_dir

CHECK_EVERY = 50  # steps between the (one) host sync that catches a non-finite loss early


class NonFiniteLossError(DigitgenError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, fused: one kernel updates every parameter, and no per-parameter host sync on the step count."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


PROBE_SECONDS = 0.4  # timed training steps per precision (after two warm-up steps): the probe takes about a second


def measured(precision: str, device: torch.device) -> bool:
    """Whether the precision is chosen by timing the model's training step: 'auto' on a CPU (see autocast_dtype)."""
    return precision == "auto" and device.type == "cpu"


def autocast_dtype(precision: str, device: torch.device, model: nn.Module, batch_size: int) -> torch.dtype | None:
    """The dtype the network runs in (None: float32). 'auto' on CUDA: bfloat16 where the GPU has it. 'auto' on a CPU:
    whichever of float32 and bfloat16 runs `model`'s training step at `batch_size` faster on this machine, measured
    once (`precision_probe`) and cached; CPU flags say what a CPU can decode, not what oneDNN makes fast on it. The
    same call with the same model and batch size, in training and in evaluation, gives the same answer."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if measured(precision, device):
        return torch.bfloat16 if precision_probe(model, batch_size)["choice"] == "bf16" else None
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def probe_cache() -> Path:
    """The machine's cache of probe results: $XDG_CACHE_HOME/digitgen/precision.json (~/.cache by default)."""
    return cache_dir() / "precision.json"


def probe_key(model: nn.Module, batch_size: int) -> str:
    """What a probe's answer holds for: CPU model, core count, torch version, model shape, batch size (not the thread
    count: a Dask worker's one-thread training and the run's evaluation get one answer)."""
    return json.dumps(
        {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "arch": model.arch(),
            "batch_size": batch_size,
        },
        sort_keys=True,
    )


def step_seconds(model: nn.Module, batch_size: int, dtype: torch.dtype | None, seconds: float = PROBE_SECONDS) -> float:
    """Seconds per training step (forward, loss, backward, Adam) of a copy of `model` on a random batch in `dtype`."""
    probe = copy.deepcopy(model).train().requires_grad_(True)  # a loaded checkpoint's copy is frozen
    optimizer = make_optimizer(probe, 1e-4)
    x = torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    @torch.enable_grad()
    def step() -> None:
        loss = loss_terms(probe, x, 1.0, dtype)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(), step()  # warm-up: oneDNN picks and caches its kernels
    steps, started = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - started < seconds:
        step()
        steps += 1
    return (time.perf_counter() - started) / steps


def precision_probe(model: nn.Module, batch_size: int, timer: Callable | None = None) -> dict:
    """{"fp32": s, "bf16": s (seconds per training step), "choice": the faster, "cached": bool}: measured with `timer`
    on first use for this machine, model shape and batch size, then read from `probe_cache()`. The global random
    state is left as it was (a run's numbers do not depend on whether the probe ran)."""
    key, cache = probe_key(model, batch_size), probe_cache()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), dict) and known[key].get("choice") in ("fp32", "bf16"):
        return {**known[key], "cached": True}
    timer = timer or step_seconds
    with torch.random.fork_rng(devices=[]):
        fp32, bf16 = timer(model, batch_size, None), timer(model, batch_size, torch.bfloat16)
    found = {"fp32": fp32, "bf16": bf16, "choice": "bf16" if bf16 < fp32 else "fp32"}
    try:  # a cache that cannot be written costs a probe next time, nothing more
        from digitgen.io import atomic_path

        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            Path(tmp).write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: found}, indent=1))
    except OSError:
        pass
    return {**found, "cached": False}


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else what the platform says)."""
    lines = _cpuinfo().splitlines()
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor()
    )


def _cpuinfo() -> str:
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


def warmup_epochs(kl_warmup: float, epochs: int) -> float:
    """The KL warm-up a run gets: never into the last epoch, so at least one epoch trains on the ELBO itself."""
    return min(kl_warmup, epochs - 1)


def loss_terms(model: nn.Module, x: torch.Tensor, beta: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[loss, recon, kl] as a 3-vector of batch means (kl is 0 for the AE); the network may run in `dtype`."""
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        out = model(x)
    return model.loss_terms(out, x, beta)  # the loss itself always in float32


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    scheduler=None,
    desc: str = "train",
    progress: bool = True,
    dtype: torch.dtype | None = None,
    binarize: bool = False,
    first_step: int = 0,
    warmup_steps: int = 0,
) -> dict:
    """One pass over `images` [N, 1, 28, 28] in shuffled batches; returns mean loss, recon and kl per image.

    KL warm-up: the KL weight grows linearly from 0 to `beta` over the first `warmup_steps` optimizer steps
    of the whole run (`first_step` is this epoch's first), so the latent code is in use before the prior
    pulls it in (Bowman et al. 2016; Sønderby et al. 2016). The returned loss uses the weight of each step.
    """
    model.train()
    n = images.shape[0]
    perm = torch.randperm(n, generator=generator).to(images.device)
    total = torch.zeros(3, device=images.device)
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False, mininterval=1.0) as bar:
        for step, idx in enumerate(perm.split(batch_size)):
            x = images[idx]
            if binarize:  # dynamic binarization: a fresh binary sample of each image, every time it is seen
                x = torch.bernoulli(x)
            done = first_step + step + 1
            weight = beta * done / warmup_steps if done < warmup_steps else beta
            terms = loss_terms(model, x, weight, dtype)
            optimizer.zero_grad(set_to_none=True)
            terms[0].backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += terms.detach() * idx.numel()
            bar.update(idx.numel())
            if (step + 1) % CHECK_EVERY == 0 and not torch.isfinite(total).all():
                break  # reported below, with the epoch
    loss, recon, kl = (total / n).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


@torch.inference_mode()
def evaluate_loss(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 2000,
    beta: float = 1.0,
    dtype: torch.dtype | None = None,
) -> dict:
    """Mean loss, recon and kl per image over `images` (one posterior sample per image for the VAE); the network may
    run in `dtype`, as in training."""
    model.eval()
    total = torch.zeros(3, device=images.device)
    for x in images.split(batch_size):
        total += loss_terms(model, x, beta, dtype) * x.shape[0]
    loss, recon, kl = (total / images.shape[0]).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


def fit(
    model: nn.Module,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    beta: float = 1.0,
    seed: int = 0,
    resume: dict | None = None,
    on_epoch: Callable[[dict, dict], None] | None = None,
    progress: bool = True,
    precision: str = "fp32",
    binarize: bool = False,
    kl_warmup: float = 0.0,
) -> list[dict]:
    """Train with Adam and a cosine learning-rate decay; returns the per-epoch history.

    `resume` is a checkpoint dict (from `on_epoch`) to continue from. `on_epoch(record, state)` is
    called after each epoch with the epoch's figures and a checkpoint dict of everything needed to
    resume: model, optimizer, scheduler and RNG states. `kl_warmup`: epochs over which the KL weight
    rises from 0 to `beta` (0: none; at most epochs - 1); test losses always use `beta`.
    """
    device = train_images.device
    dtype = autocast_dtype(precision, device, model, batch_size)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = make_optimizer(model, lr)
    steps_per_epoch = math.ceil(train_images.shape[0] / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    warmup_steps = round(warmup_epochs(kl_warmup, epochs) * steps_per_epoch)
    history, start = [], 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        for param, state in optimizer.state.items():  # Adam's moments in the layout of their parameter (channels-last)
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["rng"]["shuffle"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        history, start = list(resume["history"]), int(resume["epoch"])
    for epoch in range(start + 1, epochs + 1):
        train = train_epoch(
            model,
            train_images,
            optimizer,
            batch_size=batch_size,
            beta=beta,
            generator=generator,
            scheduler=scheduler,
            desc=f"{model.kind} epoch {epoch}/{epochs}",
            progress=progress,
            dtype=dtype,
            binarize=binarize,
            first_step=(epoch - 1) * steps_per_epoch,
            warmup_steps=warmup_steps,
        )
        if not all(math.isfinite(v) for v in train.values()):
            raise NonFiniteLossError(
                f"{model.kind.upper()} training loss became {train['loss']} in epoch {epoch}; the learning "
                f"rate ({lr:g}) is the likely cause: lower --lr and rerun"
            )
        test = evaluate_loss(model, test_images, beta=beta, dtype=dtype)
        record = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_recon": train["recon"],
            "train_kl": train["kl"],
            "test_loss": test["loss"],
            "lr": scheduler.get_last_lr()[0],
        }
        history.append(record)
        if on_epoch is not None:
            rng = {
                "shuffle": generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            }
            state = {
                "arch": model.arch(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "rng": rng,
            }
            on_epoch(record, state)
    return history
