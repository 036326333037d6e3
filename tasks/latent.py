"""Stage 6: the latent spaces of both models, side by side."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from digitgen.data.datasets import get_dataset
from digitgen.figures.plots import save_image_panels, save_latent_scatter, save_rows
from models.checkpoint import load_checkpoint
from models.latent import codes, decode_images, grid_coords, interpolate, projection
from tasks.common import logger
from tasks.data import tensors

GRID = 15  # the manifold grid is GRID x GRID decoded images


def _pair(labels: torch.Tensor, generator: torch.Generator) -> tuple[int, int]:
    """Indices of two test images of different classes, chosen by the seed."""
    order = torch.randperm(len(labels), generator=generator)
    first = order[0].item()
    second = next(i.item() for i in order[1:] if labels[i] != labels[first])
    return first, second


@task(cache_policy=NONE)
def render_latent_space(config: PipelineConfig, run_dir: str, vae_ckpt: str, ae_ckpt: str) -> dict:
    """latent_scatter.png, latent_grid.png and interpolation.png for the VAE and the AE."""
    run = Path(run_dir)
    spec = get_dataset(config.dataset)
    _, test, labels, device = tensors(config, with_train=False)
    models = {"VAE": load_checkpoint(vae_ckpt, device), "AE": load_checkpoint(ae_ckpt, device)}
    torch.manual_seed(config.seed)  # a pixel head draws its pixels from the global generator
    scatter, grids, info = [], [], {}
    for name, model in models.items():
        z = codes(model, test).cpu()
        proj = projection(z)
        xy = proj.project(z)
        note = "z" if proj.method == "latent" else "PC"
        how = (
            "2-D latent"
            if proj.method == "latent"
            else f"PCA of {z.shape[1]}-D codes, {proj.explained:.0%} of variance"
        )
        scatter.append((f"{name} test codes ({how})", xy, note))
        # Both models over the same region: where N(0, I) puts its draws (5% to 95% quantiles along two directions).
        # The VAE's codes fill it; the AE's may lie elsewhere, which is why its prior draws decode to noise.
        coords = grid_coords(GRID)
        plane = "z1, z2" if proj.method == "latent" else "PC 1-2 of its codes"
        grids.append(
            (
                f"{name}: N(0, I)'s 90% range along {plane}",
                decode_images(model, proj.lift_from_origin(coords).to(device)),
                GRID,
            )
        )
        info[name] = {"projection": proj.method, "explained_variance": proj.explained}
    files = {
        "latent_scatter": save_latent_scatter(run / "latent_scatter.png", scatter, labels, spec.classes, spec.item),
        "latent_grid": save_image_panels(
            run / "latent_grid.png", grids, "Decoded manifold: the same prior region in each latent space"
        ),
    }
    i, j = _pair(labels, torch.Generator().manual_seed(config.seed))
    x = test[[i, j]]
    rows = []
    for name, model in models.items():
        z = codes(model, x)
        rows.append((f"{name} latent", decode_images(model, interpolate(z[0], z[1], 10))))
    rows.append(("pixel blend", interpolate(x[0].flatten(), x[1].flatten(), 10).view(-1, 1, 28, 28)))
    a, b = spec.classes[labels[i].item()], spec.classes[labels[j].item()]
    title = f"Interpolating from a test {spec.item} ({a}) to another ({b})"
    files["interpolation"] = save_rows(run / "interpolation.png", rows, title)
    logger().info("Latent-space figures written to %s", run)
    return {"files": {k: str(v) for k, v in files.items()}, "projection": info}
