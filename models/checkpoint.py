"""Self-describing checkpoints: {"format", "arch", "model", "optimizer", "epoch", "config", "history", "rng"}.

Loading uses `torch.load(weights_only=True)`, which unpickles only tensors and plain containers:
a file crafted to run code is refused, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from digitgen.errors import DigitgenError
from digitgen.io import atomic_path
from models.nets import build

FORMAT = 1


class CheckpointError(DigitgenError, RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or for another architecture."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` (see module doc) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Return the checkpoint dict, or raise CheckpointError saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the vae.pt or ae.pt of a run folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data, so it was refused "
            f"unread (it may be crafted to run code, or not be a digitgen checkpoint): {str(e)[:200]}"
        ) from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch file ({type(e).__name__}: {str(e)[:200]}); "
            "rerun training to write it again"
        ) from None
    if not isinstance(state, dict) or not {"arch", "model"} <= state.keys():
        raise CheckpointError(f"checkpoint {path} is not a digitgen checkpoint (no 'arch' and 'model' entries)")
    return state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a VAE or AE from a checkpoint, on `device`, in eval mode."""
    state = read_checkpoint(path, map_location=device)
    try:
        model = build(state["arch"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not match its declared architecture {state.get('arch')}: {str(e)[:300]}"
        ) from None
    return model.to(device).eval().requires_grad_(False)  # for use: sampling and scoring need no gradients
