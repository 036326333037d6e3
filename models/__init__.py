"""Plain PyTorch: the VAE and AE, their losses, training loop, metrics and figures. Never imports Prefect."""

from models.checkpoint import CheckpointError, load_checkpoint
from models.nets import AE, VAE

__all__ = ["AE", "VAE", "CheckpointError", "load_checkpoint"]
