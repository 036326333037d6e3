"""The one typed, validated config shared by the CLI, the flow and the deployments."""

from __future__ import annotations

import copy
import json
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from digitgen.data.datasets import DATASETS, get_dataset
from digitgen.roles import ROLES, Roles


def _env_path(name: str, default: str | None) -> Path | None:
    value = os.environ.get(name, default)
    return Path(value) if value else None


def default_out() -> Path:
    """Where run folders and champion records go unless told: env DIGITGEN_OUT, else artifacts/."""
    return _env_path("DIGITGEN_OUT", "artifacts")


def new_run_name() -> str:
    """A sortable, collision-free run name: 20261126-154233-3f9a."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


# `--preset quality`: the literature-comparable setting (dynamic binarization, as in the IWAE paper).
PRESETS: dict[str, dict] = {
    "default": {},
    "quality": {
        "arch": "conv",
        "pixel_head": True,
        "kl_warmup": 2.0,
        "prior": "mixture",
        "binarize": "dynamic",
        "latent_dim": 32,
        "hidden": [512],
        "epochs": 50,  # the headline of benchmarks/quality.md: 80.68 nats, 16.3 min of VAE training (AMD EPYC)
        "batch_size": 64,
        "lr": 1.5e-3,
        "is_samples": 1000,
        "gate_margin": 1.0,  # its runs of one setting differ by up to 0.8 nats (README, "Model quality")
    },
}


def settings_with(role: str, model: type[BaseModel] | None = None) -> tuple[str, ...]:
    """The settings of `model` (default: PipelineConfig) that declare `role`, in the order they are declared."""
    if role not in ROLES:
        raise ValueError(f"unknown setting role {role!r}: known are {sorted(ROLES)}")
    fields = (model or PipelineConfig).model_fields
    return tuple(n for n, f in fields.items() if any(isinstance(m, Roles) and role in m for m in f.metadata))


DatasetName = Literal[tuple(DATASETS)]  # "mnist", "fashion-mnist"


class PipelineConfig(BaseModel):
    """Every setting of a pipeline run. Defaults are the nightly run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset: Annotated[DatasetName, Roles("weights", "sweep", "ingest")] = Field(
        "mnist", description="the dataset (digitgen/data/datasets.py describes each)"
    )
    data_version: Annotated[str | None, Roles("weights", "sweep")] = Field(
        None,
        pattern=r"^v[0-9]+-[0-9a-f]{10}$",
        description="train on this data version (see `digitgen versions`; default: the newest)",
    )
    preset: Literal["default", "quality"] = Field(
        "default",
        description="a bundle of defaults; explicit settings override it (quality: conv + pixel head, binarized, long)",
    )
    arch: Annotated[Literal["mlp", "conv"], Roles("weights", "model")] = Field(
        "mlp", description="encoder/decoder body: the MLP of pytorch/examples, or conv"
    )
    pixel_head: Annotated[bool, Roles("weights", "model")] = Field(
        False, description="add a masked-convolution (PixelCNN) layer after the decoder: pixels also see earlier pixels"
    )
    pixel_kernel: Annotated[Literal[3, 5, 7], Roles("weights", "model")] = Field(
        3,
        description="the pixel head's masked convolution: each pixel sees the pixels before it in a k x k window "
        "(3: 4 of them, 5: 12, 7: 24)",
    )
    binarize: Annotated[Literal["none", "dynamic"], Roles("weights")] = Field(
        "none", description="none: grey levels; dynamic: fresh binary samples each epoch, fixed binary test set (IWAE)"
    )
    epochs: Annotated[int, Roles("weights", "sweep")] = Field(
        10, ge=1, le=1000, description="training epochs for each model"
    )
    latent_dim: Annotated[int, Roles("weights", "model")] = Field(
        16, ge=1, le=512, description="size of the latent code z"
    )
    beta: Annotated[float, Roles("weights")] = Field(
        1.0, ge=0.0, le=1000.0, description="weight of the KL term in the VAE loss (1 = the ELBO)"
    )
    kl_warmup: Annotated[float, Roles("weights")] = Field(
        0.0, ge=0.0, le=1000.0, description="epochs over which the KL weight rises from 0 to beta (0 = none)"
    )
    prior: Annotated[Literal["normal", "mixture"], Roles("weights", "model")] = Field(
        "normal", description="the VAE's prior: normal = N(0, I); mixture = a Gaussian mixture learned with the model"
    )
    prior_components: Annotated[int, Roles("weights", "model")] = Field(
        100, ge=1, le=10_000, description="components of the learned mixture prior"
    )
    batch_size: Annotated[int, Roles("weights", "sweep")] = Field(
        256, ge=1, le=60_000, description="images per optimizer step"
    )
    lr: Annotated[float, Roles("weights")] = Field(
        5e-3, gt=0.0, le=1.0, description="Adam learning rate (decayed to 0 by a cosine schedule)"
    )
    hidden: Annotated[list[int], Roles("weights", "model")] = Field(
        [512], min_length=1, max_length=8, description="hidden layer widths of encoder (decoder mirrors)"
    )
    seed: Annotated[int, Roles("weights", "ingest")] = Field(
        0, ge=0, le=2**32 - 1, description="seeds torch and every generator: same seed, same metrics"
    )
    train_limit: Annotated[int | None, Roles("weights", "sweep")] = Field(
        None,
        ge=10,
        le=10_000_000,
        description="train on the first N official training images only (a data version's batches are always added)",
    )
    test_limit: Annotated[int | None, Roles("sweep")] = Field(
        None, ge=10, le=10_000_000, description="evaluate on the first N test images only"
    )
    is_samples: Annotated[int, Roles("sweep")] = Field(
        100, ge=1, le=100_000, description="importance samples per test image for the NLL"
    )
    gate_margin: float = Field(
        0.5,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="nats by which the VAE's test NLL must beat the champion's to be promoted, at least (the model "
        "gate's margin is the larger of this and 2 standard errors of the paired per-image difference)",
    )
    quality_samples: int = Field(10_000, ge=100, le=100_000, description="generated images scored by the classifier")
    classifier_epochs: Annotated[int, Roles("ingest")] = Field(
        3, ge=1, le=100, description="epochs of the classifier that judges samples and new batches' labels"
    )
    min_label_agreement: Annotated[float | None, Roles("ingest")] = Field(
        None,
        ge=0.0,
        le=1.0,
        description="ingest: the share of a batch's labels the classifier must agree with (default: the dataset's, "
        "0.9 for mnist, 0.8 for fashion-mnist)",
    )
    data_root: Annotated[Path, Roles("resume", "place", "sweep", "ingest")] = Field(
        default_factory=lambda: _env_path("DIGITGEN_DATA_ROOT", "data"),
        description="where datasets, their versions and batches are stored (env DIGITGEN_DATA_ROOT)",
    )
    data_source: Annotated[Path | None, Roles("resume", "place", "sweep", "ingest")] = Field(
        default_factory=lambda: _env_path("DIGITGEN_DATA_SOURCE", None),
        validate_default=True,  # a DIGITGEN_DATA_SOURCE that does not exist is refused like --data-source
        description="offline folder with the dataset's four .gz files, or a root holding the dataset's raw/ folder "
        "(env DIGITGEN_DATA_SOURCE)",
    )
    out: Annotated[Path, Roles("place", "sweep")] = Field(
        default_factory=default_out,
        description="where run folders and champion records go (env DIGITGEN_OUT)",
    )
    tracking_uri: Annotated[str | None, Roles("resume", "place", "sweep")] = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or None,
        description="MLflow tracking server (env MLFLOW_TRACKING_URI; unset: SQLite, mlflow.db in the output folder)",
    )
    run_name: Annotated[str, Roles("sweep")] = Field(
        default_factory=new_run_name,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="name of the run folder under --out (default: a timestamp); a flow run given "
        "none is named after the flow run",
    )
    device: Annotated[Literal["auto", "cpu", "cuda"], Roles("resume", "sweep", "ingest")] = Field(
        "auto", description="auto = CUDA when available, else CPU"
    )
    precision: Annotated[Literal["auto", "fp32", "bf16"], Roles("resume")] = Field(
        "auto",
        description="network arithmetic in training and evaluation: auto = on a CPU the faster of float32 and bfloat16 "
        "for this model's training step, measured once per machine (about a second; cached); on CUDA bfloat16 where "
        "the GPU has it",
    )
    progress: Annotated[bool, Roles("resume", "place", "ingest")] = Field(True, description="show progress bars")
    resume: Annotated[Path | None, Roles("place")] = Field(
        None, description="continue the run in this folder from its last complete epoch (its settings are reused)"
    )
    task_runner: Annotated[Literal["thread", "dask"], Roles("resume", "place")] = Field(
        "thread", description="dask trains the VAE and the AE in parallel on a Dask cluster"
    )
    dask_address: Annotated[str | None, Roles("resume", "place")] = Field(
        None, description="scheduler of an existing Dask cluster, e.g. tcp://host:8786 (default: a local cluster)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            given = {k: v for k, v in data.items() if v is not None}
            preset = dict(PRESETS[data["preset"]])
            if given.get("arch", "conv") != "conv" or given.get("binarize", "dynamic") != "dynamic":
                preset.pop("pixel_head", None)  # an explicit mlp body or grey levels: no head unless asked for
            data = {**preset, **given}
        return data

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(h < 1 or h > 16_384 for h in v):
            raise ValueError("every hidden width must be between 1 and 16384")
        return v

    @field_validator("data_source")
    @classmethod
    def _source_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(
                f"data source folder {v} does not exist; point it at the folder with the dataset's .gz files "
                "(or a root holding <Name>/raw/, e.g. MNIST/raw/)"
            )
        return v

    @model_validator(mode="after")
    def _head_needs_conv(self) -> PipelineConfig:
        if self.pixel_head and self.arch != "conv":
            raise ValueError(
                "pixel_head needs arch 'conv' (its features come from the conv decoder): use --arch conv or --no-pixel-head"
            )
        if self.pixel_head and self.binarize != "dynamic":
            raise ValueError(
                "pixel_head needs binarize 'dynamic' (it draws binary pixels, so it must learn from binary images): "
                "use --binarize dynamic or --no-pixel-head"
            )
        return self

    @model_validator(mode="after")
    def _fits_the_data(self) -> PipelineConfig:
        spec = get_dataset(self.dataset)
        if self.train_limit is not None and self.train_limit > spec.n_train:
            raise ValueError(
                f"train_limit ({self.train_limit}) is larger than {spec.title}'s {spec.n_train:,} training images"
            )
        if self.test_limit is not None and self.test_limit > spec.n_test:
            raise ValueError(
                f"test_limit ({self.test_limit}) is larger than {spec.title}'s {spec.n_test:,} test images"
            )
        n = self.train_limit or spec.n_train
        if self.batch_size > n:
            raise ValueError(f"batch_size ({self.batch_size}) is larger than the training set ({n} images)")
        return self

    @classmethod
    def for_resume(cls, folder: Path, **overrides) -> PipelineConfig:
        """The settings of an interrupted run, read from its config.json, pointed back at its folder.

        Only RESUME_OVERRIDES may change (where and how it runs); the rest must stay as the run began.
        """
        folder = Path(folder)
        refused = sorted(set(overrides) - RESUME_OVERRIDES)
        if refused:
            flags = ", ".join("--" + k.replace("_", "-") for k in refused)
            raise ValueError(f"resume: {flags} cannot change when resuming; the run continues with its own settings")
        try:
            saved = json.loads((folder / "config.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise ValueError(f"resume: {folder} is not a run folder (no config.json in it)") from None
        except json.JSONDecodeError as e:
            raise ValueError(
                f"resume: {folder / 'config.json'} is not valid JSON ({e}); the run cannot be resumed"
            ) from None
        if not isinstance(saved, dict):
            raise ValueError(
                f"resume: {folder / 'config.json'} holds {type(saved).__name__}, not the run's settings; "
                "the run cannot be resumed (start a new run)"
            )
        # Settings added after the run began take their plain defaults, not the preset's: the run trained without them.
        missing = {k: f.get_default(call_default_factory=True) for k, f in cls.model_fields.items() if k not in saved}
        saved = {**missing, **saved}
        saved.update(overrides, out=folder.parent, run_name=folder.name, resume=folder)
        return cls(**saved)

    def same_run_as(self, other: PipelineConfig) -> bool:
        """True when both would train the same models (paths, progress bars and runners aside)."""
        skip = set(settings_with("place", type(self)))
        return self.model_dump(exclude=skip) == other.model_dump(exclude=skip)

    @property
    def run_dir(self) -> Path:
        return self.out / self.run_name

    def model_arch(self, kind: str) -> dict:
        """What `models.nets.build` takes to make the `kind` ("vae" or "ae") model of this run (the AE has no prior
        and ignores the prior's entries)."""
        named = {"arch": "body"}  # the one setting the network names otherwise
        return {
            "kind": kind,
            **{named.get(n, n): copy.copy(getattr(self, n)) for n in settings_with("model", type(self))},
        }

    def check_writable(self, which: tuple[str, ...] = ("out", "data_root")) -> None:
        """Raise a clear error now, not after training, if the output folder or the data root cannot be written. A
        folder not there yet is not made here (a refused run leaves nothing behind): its nearest existing parent is
        tried instead. The error names the environment variable when it set the folder, else the flag."""
        for field in which:
            from digitgen.io import write_problem

            folder, flag = getattr(self, field), "--" + field.replace("_", "-")
            var = {"out": "DIGITGEN_OUT", "data_root": "DIGITGEN_DATA_ROOT"}[field]
            given = f"{var}={os.environ[var]}" if os.environ.get(var) and Path(os.environ[var]) == folder else flag
            problem = write_problem(folder)
            if problem and problem.endswith("is a file, not a folder"):
                raise PermissionError(
                    f"{given}: {problem}; the run writes data versions, the judge classifier and "
                    f"run folders there: choose another {given.split('=')[0]}"
                )
            if problem:
                raise PermissionError(
                    f"{given}: cannot write to {folder} ({problem}); the run writes there "
                    f"(data versions, the judge classifier, run folders): choose another "
                    f"{given.split('=')[0]}"
                )


# The sweep: its grid's defaults, and the settings a sweep point takes from the user (beta and latent_dim come
# from the grid). The CLI's `sweep` options and the digit-sweep flow's parameters are both made from these.
SWEEP_GRID = {"betas": [0.5, 1.0, 2.0], "latent_dims": [2, 8, 16]}
SWEEP_SETTINGS = list(settings_with("sweep"))
# The lists by role that other modules use (see ROLES)
TRAINING_SETTINGS = settings_with("weights")
RESUME_OVERRIDES = frozenset(settings_with("resume"))
INGEST_SETTINGS = settings_with("ingest")
