"""The judge: a classifier of the dataset, trained once on its official training images and kept beside the data."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from digitgen.data.datasets import get_dataset
from digitgen.data.loading import load_dataset, to_float
from digitgen.data.versions import dataset_dir
from digitgen.io import locked
from models.checkpoint import read_checkpoint, save_checkpoint
from models.classifier import ImageClassifier, predict, train_classifier
from models.train import pick_device
from tasks.common import logger
from tasks.results import JudgeModel

# The judge is the instrument every run is measured with, so that runs of other seeds compare: it is trained with
# this seed whatever the run's (a run's seed used to pick its own judge, and one of each seed was trained).
JUDGE_SEED = 0


def classifier_path(config: PipelineConfig, fingerprint: str) -> Path:
    """`<data root>/<dataset>/judge-...pt`: one judge per dataset, archives, training images and epochs."""
    spec = get_dataset(config.dataset)
    n = config.train_limit or spec.n_train
    folder = dataset_dir(config.data_root, spec)
    return folder / f"judge-{fingerprint}-n{n}-e{config.classifier_epochs}-s{JUDGE_SEED}.pt"


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> ImageClassifier:
    return _from_state(read_checkpoint(path, map_location=device), device)


def _from_state(state: dict, device) -> ImageClassifier:
    model = ImageClassifier(state["arch"].get("n_classes", 10))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_judge(
    path: str | Path, test_images: torch.Tensor, device: torch.device | str = "cpu"
) -> tuple[ImageClassifier, torch.Tensor, torch.Tensor]:
    """The judge, with its class probabilities and features of the official test images `test_images` (uint8):
    saved with the judge when it was trained (judging 10,000 images takes every run 1-2 s on one thread), computed
    here for a judge saved before they were."""
    state = read_checkpoint(path, map_location=device)
    model = _from_state(state, device)
    if "test_features" in state and len(state["test_features"]) == len(test_images):
        return model, state["test_probs"], state["test_features"]
    return model, *predict(model, to_float(test_images, device))


@task(cache_policy=NONE)
def train_judge(config: PipelineConfig, fingerprint: str) -> JudgeModel:
    """Train the classifier unless this data already has one; return its path and test accuracy."""
    path = classifier_path(config, fingerprint)
    if not path.exists():
        logger().info("No classifier for this data yet: training it, or waiting for a run that is (%s)", path)
        with locked(path):  # runs sharing the data root (a team's workers) wait for one judge, not each train one
            if not path.exists():
                return _train_judge(config, path)
    state = read_checkpoint(path)
    logger().info("Classifier for this data found: %s (test accuracy %.2f%%)", path, 100 * state["test_accuracy"])
    return JudgeModel(checkpoint=str(path), test_accuracy=state["test_accuracy"])


def _train_judge(config: PipelineConfig, path: Path) -> JudgeModel:
    device = pick_device(config.device)
    spec = get_dataset(config.dataset)
    data = load_dataset(config.data_root, spec)
    train = to_float(data.train_images[: config.train_limit], device)
    test = to_float(data.test_images, device)
    model = train_classifier(
        train,
        data.train_labels[: config.train_limit],
        epochs=config.classifier_epochs,
        seed=JUDGE_SEED,
        progress=config.progress,
        n_classes=spec.n_classes,
    )
    probs, feats = predict(model, test)
    accuracy = (probs.argmax(1).cpu() == data.test_labels).double().mean().item()
    state = {"arch": model.arch(), "model": model.state_dict(), "test_accuracy": accuracy}
    save_checkpoint(path, {**state, "test_probs": probs.cpu(), "test_features": feats.cpu()})  # what runs compare to
    logger().info("Classifier trained on %d images: test accuracy %.2f%% -> %s", len(train), 100 * accuracy, path)
    return JudgeModel(checkpoint=str(path), test_accuracy=accuracy)
