"""Tensors for the training and evaluation stages, limited and placed as the config says."""

from __future__ import annotations

import torch

from digitgen.config import PipelineConfig
from digitgen.data.datasets import get_dataset
from digitgen.data.loading import load_dataset, to_float
from digitgen.data.versions import get_version, version_train_set
from models.train import pick_device


def train_set(config: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's training set (uint8 images [N, 28, 28], labels [N]): the first `train_limit` official training
    images, then every batch of the data version."""
    spec = get_dataset(config.dataset)
    data = load_dataset(config.data_root, spec)
    manifest = get_version(config.data_root, spec, config.data_version)
    return version_train_set(config.data_root, spec, manifest, data.train_images, data.train_labels, config.train_limit)


def tensors(
    config: PipelineConfig, with_train: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.device]:
    """(train images, test images, test labels, device): float [N, 1, 28, 28] in [0, 1] on the device.

    `with_train=False` skips the 188 MB float copy of the training set (None in its place).
    """
    device = pick_device(config.device)
    data = load_dataset(config.data_root, get_dataset(config.dataset))
    train = to_float(train_set(config)[0], device) if with_train else None
    test = to_float(data.test_images[: config.test_limit], device)
    if config.binarize == "dynamic":  # one fixed binary test set per seed; training draws fresh ones (models.train)
        test = torch.bernoulli(test.cpu(), generator=torch.Generator().manual_seed(config.seed)).to(device)
    return train, test, data.test_labels[: config.test_limit], device
