"""What is specific to each dataset, described once: archives, shapes, class names, checks and published anchors.

Everything else in digitgen takes a `DatasetSpec` (or the setting `dataset`, a key of DATASETS) and names no dataset.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset in torchvision's idx format: 28x28 greyscale images, ten classes, official train/test split."""

    name: str  # the setting's value, also the dataset's folder under the data root (archives in its raw/): "mnist"
    title: str  # as people write it: "MNIST"
    folder: str  # torchvision's class that downloads and extracts the archives, and its folder in a source: "MNIST"
    classes: tuple[str, ...]  # class names in label order
    item: str  # what one image shows, for sentences: "digit"
    items: str  # plural: "digits"
    n_train: int  # images in the official training split
    n_test: int  # images in the official test split
    class_share: tuple[float, float]  # every class holds this share of each official split
    ink_range: tuple[float, float]  # share of pixels above half intensity, per image (0 = blank)
    archives: tuple[tuple[str, str], ...] = ()  # the four official .gz files and their md5s, as torchvision lists them
    champion: str = ""  # file stem of the champion record under --out (default: champion-<name>)
    min_label_agreement: float = 0.9  # share of a new batch's labels the judge classifier must agree with
    image_shape: tuple[int, int] = (28, 28)
    # Published figures worth setting beside ours, in nats per test image: {description: value}.
    anchors: dict[str, float] = field(default_factory=dict)

    @property
    def torchvision(self) -> type:
        """The torchvision dataset class named `folder` (imported on first use: torchvision takes a second)."""
        return getattr(importlib.import_module("torchvision.datasets"), self.folder)

    @property
    def files(self) -> dict[str, str]:
        """The four official archives: {file name: md5} (written here, not read from torchvision: listing versions
        and checking files then never imports torch; a test holds them equal to torchvision's list)."""
        return dict(self.archives)

    @property
    def champion_stem(self) -> str:
        return self.champion or f"champion-{self.name}"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def pixels(self) -> int:
        return self.image_shape[0] * self.image_shape[1]


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        folder="MNIST",
        classes=tuple(str(d) for d in range(10)),
        item="digit",
        items="digits",
        n_train=60_000,
        n_test=10_000,
        class_share=(0.08, 0.12),  # measured: 9.0% (fives) to 11.3% (ones)
        ink_range=(0.005, 0.6),  # measured: 1.9% to 40% of the pixels are pen strokes
        archives=(
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        champion="champion",  # the first dataset: its records keep the names they always had
        anchors={
            "pytorch/examples VAE, 10 epochs, grey levels (-ELBO)": 105.56,
            "VAE, IWAE paper (Burda et al. 2016), binarized": 86.76,
            "2-layer IWAE k=50 (Burda et al. 2016), binarized": 82.90,
            "convolutional VAE (MillionIntegrals/vel), binarized": 81.02,
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        folder="FashionMNIST",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        item="fashion item",
        items="fashion items",
        n_train=60_000,
        n_test=10_000,
        class_share=(0.08, 0.12),  # exactly 10% each in both splits
        ink_range=(0.001, 0.95),  # garments fill the frame: measured 0.1% (a sandal's thin straps) to 85%
        archives=(
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        min_label_agreement=0.8,  # shirts, T-shirts, pullovers and coats are confused: people agree on ~84% of labels
        anchors={"pytorch/examples VAE, 10 epochs, grey levels (-ELBO)": 244.41},
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    """The description of dataset `name`; a clear error naming the known ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
