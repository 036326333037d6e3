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
    state = read_checkpoint(path, map_location=device)
    model = ImageClassifier(state["arch"].get("n_classes", 10))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@task(cache_policy=NONE)
def train_judge(config: PipelineConfig, fingerprint: str) -> JudgeModel:
    """Train the classifier unless this data already has one; return its path and test accuracy."""
    log = logger()
    path = classifier_path(config, fingerprint)
    if path.exists():
        state = read_checkpoint(path)
        log.info("Classifier for this data found: %s (test accuracy %.2f%%)", path, 100 * state["test_accuracy"])
        return JudgeModel(checkpoint=str(path), test_accuracy=state["test_accuracy"])
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
    probs, _ = predict(model, test)
    accuracy = (probs.argmax(1).cpu() == data.test_labels).double().mean().item()
    save_checkpoint(path, {"arch": model.arch(), "model": model.state_dict(), "test_accuracy": accuracy})
    log.info("Classifier trained on %d images: test accuracy %.2f%% -> %s", len(train), 100 * accuracy, path)
    return JudgeModel(checkpoint=str(path), test_accuracy=accuracy)
