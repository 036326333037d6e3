"""Tensors for the training and evaluation stages, limited and placed as the config says."""

from __future__ import annotations

import torch

from digitgen.config import PipelineConfig
from models.data import load_mnist, to_float
from models.train import pick_device


def tensors(
    config: PipelineConfig, with_train: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.device]:
    """(train images, test images, test labels, device): float [N, 1, 28, 28] in [0, 1] on the device.

    `with_train=False` skips the 188 MB float copy of the training set (None in its place).
    """
    device = pick_device(config.device)
    data = load_mnist(config.data_root)
    train = to_float(data.train_images[: config.train_limit], device) if with_train else None
    test = to_float(data.test_images[: config.test_limit], device)
    if config.binarize == "dynamic":  # one fixed binary test set per seed; training draws fresh ones (models.train)
        test = torch.bernoulli(test.cpu(), generator=torch.Generator().manual_seed(config.seed)).to(device)
    return train, test, data.test_labels[: config.test_limit], device
