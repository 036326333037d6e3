"""Where `make bench` runs: the machine (CPU, bfloat16 flags, the precision probe's figures, matmul peak) and the data
(a data root with MNIST staged, and the same archives laid out for pytorch/examples' torchvision loader)."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MNIST = "mnist"  # the benchmark is pytorch/examples' setting


def load_mnist(root: Path):
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset

    return load_dataset(root, get_dataset(MNIST))


def data_root() -> Path:
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset, stage_source

    root = Path(os.environ.get("DIGITGEN_DATA_ROOT", ROOT / "data"))
    source = os.environ.get("DIGITGEN_DATA_SOURCE") or ROOT.parent / "shared" / "data"
    if Path(source).is_dir():
        stage_source(source, root, get_dataset(MNIST))
    load_dataset(root, get_dataset(MNIST), download=True)
    return root


@contextlib.contextmanager
def torchvision_root(root: Path) -> Iterator[str]:
    """A folder laid out as pytorch/examples' torchvision MNIST reads it (`<folder>/MNIST/raw`), linking to the
    archives of the data root `root` (`<root>/mnist/raw`)."""
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import raw_folder

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "MNIST").mkdir()
        (Path(folder) / "MNIST" / "raw").symlink_to(raw_folder(root, get_dataset(MNIST)).resolve())
        yield folder


def matmul_peak(dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """This machine's dense matmul rate (GFLOP/s) in `dtype` (None: float32), over about `seconds`."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype or torch.float32), torch.randn(n, n, dtype=dtype or torch.float32)
    a @ b  # warm-up
    done, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        done += 1
    return done * 2 * n**3 / (time.perf_counter() - t) / 1e9


def machine() -> str:
    """The CPU, its bfloat16 flags, and what the precision probe measured on the default VAE's training step."""
    import torch

    from digitgen.config import PipelineConfig
    from models.nets import build
    from models.train import cpu_name, precision_probe

    info = open("/proc/cpuinfo").read()
    cpu = cpu_name()
    flags = sorted({"amx_bf16", "avx512_bf16", "avx512_fp16"} & set(info.split())) or ["no bfloat16 flags"]
    cfg = PipelineConfig()
    probe = precision_probe(build(cfg.model_arch("vae")), cfg.batch_size)
    return (
        f"{cpu}, {os.cpu_count()} cores (flags: {', '.join(flags)}; precision probe on the default VAE's training "
        f"step: float32 {probe['fp32'] * 1e3:.2f} ms, bfloat16 {probe['bf16'] * 1e3:.2f} ms"
        f"{' (cached)' if probe['cached'] else ''}: `--precision auto` trains in {probe['choice']}), Python "
        f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
