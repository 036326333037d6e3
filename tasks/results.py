"""What the stages hand each other: small typed results (the metrics are typed in models/scores.py, the gate's
decision in digitgen/registry/gate.py)."""

from __future__ import annotations

from pydantic import BaseModel


class Trained(BaseModel):
    """A trained model: its checkpoint, its losses per epoch, and the seconds its training took."""

    checkpoint: str
    history: list[dict]
    seconds: float


class JudgeModel(BaseModel):
    """The judge classifier of a dataset: its checkpoint and its accuracy on the official test images."""

    checkpoint: str
    test_accuracy: float


class Samplers(BaseModel):
    """The ex-post samplers of a run: samplers.pt, or None (and why) when a class had too few images for one."""

    path: str | None
    why: str | None = None
