"""Plain PyTorch: the VAE and AE, their losses, training loop, metrics, samplers and generation. Never imports
Prefect, nor the data, registry and figure libraries (those live in `digitgen.data`, `digitgen.registry` and
`digitgen.figures`).

The names below load torch when first used, not when `models` is imported, so `--help` never waits for torch."""

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
