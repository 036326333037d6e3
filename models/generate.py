"""New images from a trained run: `digitgen generate SOURCE --n N [--digit D] [--sampler NAME] [--seed S] --out FILE`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from digitgen.data.datasets import DatasetSpec, get_dataset
from digitgen.errors import DigitgenError
from models.samplers import SamplerError, check_sampler, draw_codes, load_mixtures

if TYPE_CHECKING:  # torch, the checkpoints and the plots are imported where used: a refused request answers at once
    import torch

MAX_PNG = 1024  # images in one PNG grid; .npy takes any number
MAX_N = 100_000


class GenerateError(DigitgenError, ValueError):
    """SOURCE, the count, the class or the output file cannot be used."""


def resolve_source(source: str) -> Path:
    """A run folder as SOURCE (the champion comes from the registry: digitgen.registry.gate.champion_files)."""
    run = Path(source)
    if not (run / "vae.pt").is_file():
        raise GenerateError(
            f"{run} is not a run folder (no vae.pt in it): give a folder that `digitgen run` printed, or `champion`"
        )
    return run


def run_dataset(run: Path) -> DatasetSpec:
    """The dataset a run folder was trained on (its config.json)."""
    try:
        return get_dataset(json.loads((run / "config.json").read_text()).get("dataset", "mnist"))
    except (OSError, ValueError) as e:
        raise GenerateError(f"{run / 'config.json'} cannot be read ({e}); is {run} a complete run folder?") from None


def check_request(run: Path, n: int, cls: int | None = None, sampler: str = "gmm", out: Path | None = None) -> None:
    """Refuse what no model can do, before any is loaded: the count, the sampler, the class, the output file."""
    if not 1 <= n <= MAX_N:
        raise GenerateError(f"--n must be between 1 and {MAX_N:,} (got {n})")
    try:
        check_sampler(sampler, cls)
    except SamplerError as e:
        raise GenerateError(str(e)) from None
    spec = run_dataset(run)
    if cls is not None and not 0 <= cls < spec.n_classes:
        raise GenerateError(f"--digit {cls}: {spec.title} has classes 0 to {spec.n_classes - 1}")
    if out is not None:
        check_out(Path(out), n)


def check_out(out: Path, n: int) -> None:
    """The output file's kind and size, and that its folder can be written (probed, nothing left behind)."""
    from digitgen.io import write_problem

    if out.suffix not in (".png", ".npy"):
        raise GenerateError(f"--out {out}: the file must end in .png (a labelled grid) or .npy (an array)")
    if out.suffix == ".png" and n > MAX_PNG:
        raise GenerateError(f"--out {out}: a PNG grid holds at most {MAX_PNG:,} images; write .npy for more")
    if out.is_dir():
        raise GenerateError(f"--out {out} is a folder: give a file name ending in .png or .npy")
    problem = write_problem(out.parent)
    if problem:
        raise GenerateError(f"--out {out}: cannot write there ({problem}); choose another --out")


def generate(
    run: Path,
    n: int,
    cls: int | None = None,
    sampler: str = "gmm",
    seed: int = 0,
    model: str = "vae",
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`n` images [n, 1, H, W] in [0, 1] decoded by the run's `model`, and the class each was drawn for (None for
    the prior, which knows no classes). Same arguments, same images."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.latent import decode_images

    check_request(run, n, cls, sampler)
    decoder = load_checkpoint(run / f"{model}.pt", device)
    mixtures = load_mixtures(run / "samplers.pt", model) if sampler != "prior" else None
    if sampler != "prior" and mixtures is None:
        raise GenerateError(
            f"{run} has no fitted samplers (samplers.pt; runs before they existed have none): use "
            "--sampler prior, or train a new run"
        )
    torch.manual_seed(seed)  # a pixel head draws its pixels from the global generator
    try:
        z, classes = draw_codes(sampler, n, decoder, torch.Generator().manual_seed(seed), mixtures, cls)
    except SamplerError as e:
        raise GenerateError(str(e)) from None
    return decode_images(decoder, z.to(device)).cpu(), classes


def save_generated(
    path: Path, images: torch.Tensor, classes: torch.Tensor | None, spec: DatasetSpec, title: str
) -> Path:
    """.png: a grid, each image labelled with its class; .npy: float32 [N, H, W] in [0, 1]. Written atomically."""
    import numpy as np

    from digitgen.io import atomic_path

    path = Path(path)
    check_out(path, len(images))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, images[:, 0].float().clamp(0, 1).numpy().astype(np.float32))
        return path
    from digitgen.figures.plots import save_labelled_grid  # matplotlib and torchvision: 1.7 s an array never needs

    labels = [spec.classes[c] for c in classes.tolist()] if classes is not None else [""] * len(images)
    return save_labelled_grid(path, images, labels, title, ncol=min(8, len(images)))


def generate_file(
    run: Path,
    out: Path,
    n: int,
    cls: int | None = None,
    sampler: str = "gmm",
    seed: int = 0,
    model: str = "vae",
    device: str | torch.device = "cpu",
    name: str | None = None,
) -> tuple[Path, str]:
    """`generate` into `out` (.png or .npy, see save_generated); returns the file and the title it was given (which
    names the run `name`, by default the folder's)."""
    spec = run_dataset(run)
    check_request(run, n, cls, sampler, out)  # refused before any work
    images, classes = generate(run, n, cls, sampler, seed, model, device)
    what = f"{spec.items} drawn for class {spec.classes[cls]}" if cls is not None else spec.items
    title = f"{model.upper()} of {name or run.name}: {len(images)} {what} (sampler {sampler}, seed {seed})"
    return save_generated(out, images, classes, spec, title), title
