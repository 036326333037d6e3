"""Plain PyTorch: the VAE and AE, their losses, training loop, metrics and figures. Never imports Prefect.

The names below load torch when first used, not when `models` is imported: the CLI reads settings and dataset facts
from `models` and answers `--help` or a refused setting without waiting for torch."""

from __future__ import annotations

import importlib

__all__ = ["AE", "VAE", "CheckpointError", "load_checkpoint"]
_HOME = {
    "AE": "models.nets",
    "VAE": "models.nets",
    "CheckpointError": "models.checkpoint",
    "load_checkpoint": "models.checkpoint",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
