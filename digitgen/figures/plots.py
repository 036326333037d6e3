"""Figures for the report (matplotlib, Agg backend). Every function writes one PNG atomically."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from digitgen.io import atomic_path  # noqa: E402

CLASS_COLOURS = plt.get_cmap("tab10")


def _save(fig, path: Path) -> Path:
    """Write `fig` as a 256-colour PNG: the same picture in about 40% of the bytes of matplotlib's RGBA file.

    The report artifact embeds every figure; at full size a quality run's came to 1.7 MB, over the 1.5 MB Prefect
    publishes as an event (it warned "Refusing to publish event"), and the UI loads it on every visit."""
    buffer = io.BytesIO()
    try:  # an uncompressed PNG in memory, read back at once: compressing it cost a third of the time of a figure
        fig.savefig(
            buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white", pil_kwargs={"compress_level": 0}
        )
    finally:
        plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(256)
    # zlib's default level: optimize=True wrote a trial run's nine figures 3% smaller, in 0.29 s against 0.07 s
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def _tile(images: torch.Tensor, nrow: int):
    """[N, 1, 28, 28] in [0, 1] -> an HxW array for imshow."""
    from torchvision.utils import make_grid  # on first use: importing torchvision takes over a second

    return make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=0.0)[0].numpy()


def _show(ax, images, nrow, title=None):
    ax.imshow(_tile(images, nrow), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=11)


def save_samples(path: Path, images: torch.Tensor, title: str) -> Path:
    """An 8x8 grid of decoded samples."""
    fig, ax = plt.subplots(figsize=(5.2, 5.6))
    _show(ax, images, nrow=8, title=title)
    return _save(fig, path)


def save_reconstructions(path: Path, originals, ae_recons, vae_recons, items: str = "images") -> Path:
    """Three rows: test images, their AE reconstructions, their VAE reconstructions."""
    rows = [(f"test {items}", originals), ("AE reconstruction", ae_recons), ("VAE reconstruction", vae_recons)]
    fig, axes = plt.subplots(3, 1, figsize=(9, 3.6))
    for ax, (label, imgs) in zip(axes, rows):
        _show(ax, imgs, nrow=imgs.shape[0])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"Reconstructions of unseen test {items}", fontsize=12)
    return _save(fig, path)


def save_latent_scatter(
    path: Path,
    panels: list[tuple[str, torch.Tensor, str]],
    labels: torch.Tensor,
    classes: tuple[str, ...],
    item: str = "class",
) -> Path:
    """Side-by-side scatter plots of 2-D codes coloured by class. panels: (title, coords [N, 2], axis note)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.6))
    labels = labels.cpu()
    for ax, (title, xy, note) in zip(axes, panels):
        xy = xy.cpu()
        for c, name in enumerate(classes):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.5, color=CLASS_COLOURS(c % 10), label=name)
        ax.set_title(title, fontsize=12)
        ax.set_xlabel(f"{note} 1")
        ax.set_ylabel(f"{note} 2")
        ax.grid(alpha=0.2)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=CLASS_COLOURS(c % 10), label=name) for c, name in enumerate(classes)
    ]
    fig.legend(handles=handles, title=item, loc="center right", frameon=False)
    fig.subplots_adjust(right=0.92 if max(len(c) for c in classes) < 4 else 0.88)
    return _save(fig, path)


def save_image_panels(path: Path, panels: list[tuple[str, torch.Tensor, int]], suptitle: str, cols: int = 0) -> Path:
    """Image grids side by side, `cols` to a row (default: all). panels: (title, images [N, 1, 28, 28], per row)."""
    cols = cols or len(panels)
    rows = -(-len(panels) // cols)
    # "compressed": square image axes packed under the title, with no band of white between (constrained layout
    # for fixed-aspect axes)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 6.4 * rows), squeeze=False, layout="compressed")
    for ax, (title, imgs, nrow) in zip(axes.flat, panels):
        _show(ax, imgs, nrow=nrow, title=title)
    fig.suptitle(suptitle, fontsize=12)
    return _save(fig, path)


def save_rows(path: Path, rows: list[tuple[str, torch.Tensor]], title: str) -> Path:
    """One labelled row of images per entry: interpolations per method, samples per class."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.25 * len(rows) + 0.6), layout="compressed")
    for ax, (label, imgs) in zip(axes, rows):
        _show(ax, imgs, nrow=imgs.shape[0])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def save_curves(path: Path, histories: dict[str, tuple[str, list[dict]]]) -> Path:
    """Train and test loss per epoch, one panel per model, each on an axis that names its loss.

    histories: {model name: (loss name, [{"epoch", "train_loss", "test_loss"}])}.
    """
    fig, axes = plt.subplots(1, len(histories), figsize=(5.2 * len(histories), 4.0), squeeze=False)
    for ax, (name, (loss, hist)), colour in zip(axes[0], histories.items(), ["tab:blue", "tab:orange", "tab:green"]):
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["train_loss"] for h in hist], "--x", color=colour, ms=4, label="train")
        ax.plot(epochs, [h["test_loss"] for h in hist], "-o", color=colour, ms=3, label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(f"{loss} (nats per image)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves (lower is better)")
    return _save(fig, path)


def save_decisions(path: Path, decisions: list[dict], label: str) -> Path:
    """The gate's decisions over time: each run's test NLL (`label`: its name for the axis), promoted runs filled,
    rejected ones hollow, and the champion's value as a step line."""
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    x = list(range(1, len(decisions) + 1))
    best, line = None, []
    for d in decisions:
        best = d["value"] if d["promoted"] else best
        line.append(best)
    ax.step(x, line, where="post", color="tab:green", lw=1.5, label="champion")
    for promoted, style in ((True, {"color": "tab:blue"}), (False, {"facecolors": "none", "edgecolors": "tab:red"})):
        pts = [(i, d["value"]) for i, d in zip(x, decisions) if d["promoted"] == promoted]
        if pts:
            ax.scatter(*zip(*pts), s=36, zorder=3, label="promoted" if promoted else "rejected", **style)
    step = max(1, len(x) // 12)
    ax.set_xticks(x[::step], [d["run_name"] for d in decisions][::step], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{label} (nats, lower is better)")
    ax.set_title("Model gate decisions, oldest first")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def save_heatmap(path: Path, values, rows: list, cols: list, row_label: str, col_label: str, title: str) -> Path:
    """A grid of numbers (lower is better, darker is better), each cell labelled; `values` is [rows][cols]."""
    import numpy as np

    grid = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2.5, 1.0 * len(rows) + 1.8))
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    best = np.unravel_index(np.nanargmin(grid), grid.shape)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(
            j,
            i,
            f"{v:.1f}",
            ha="center",
            va="center",
            fontsize=10,
            color="white" if (i, j) != best else "red",
            fontweight="bold" if (i, j) == best else "normal",
        )
    fig.colorbar(im, ax=ax, label="nats per image")
    ax.set_title(title)
    return _save(fig, path)


def save_labelled_grid(path: Path, images: torch.Tensor, labels: list[str], title: str, ncol: int = 8) -> Path:
    """Images [N, 1, H, W] in [0, 1] in a grid, each titled with its label."""
    n = images.shape[0]
    nrow = max(1, -(-n // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.1 * ncol, 1.25 * nrow + 0.5), squeeze=False, layout="compressed")
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
        if i < n:
            ax.imshow(images[i, 0].detach().float().cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(labels[i], fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def png_data_uri(path: Path) -> str:
    """data:image/png;base64,... of a PNG file: the Prefect UI renders these inside markdown."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
