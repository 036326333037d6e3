"""Bad input and faults: each test injects one and checks the error a user sees and that nothing is lost."""

from __future__ import annotations

import gzip
import json
import urllib.error
from pathlib import Path

import pytest
import torch

from digitgen.gate import Decision
from models.checkpoint import save_checkpoint
from models.data import DataSourceError
from models.data import stage_source as _stage
from models.datasets import get_dataset
from models.io import atomic_path, write_json

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
MNIST = get_dataset("mnist")
MNIST_FILES = MNIST.files


def stage_source(source, root):
    return _stage(source, root, MNIST)


def _no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --- the data source -------------------------------------------------------------------------------------------


def test_missing_source_folder(tmp_path):
    with pytest.raises(DataSourceError, match=r"not a folder.*DIGITGEN_DATA_SOURCE"):
        stage_source(tmp_path / "nowhere", tmp_path / "root")


def test_missing_file_is_named(tmp_path, source_copy):
    (source_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataSourceError, match=r"has no t10k-labels-idx1-ubyte\.gz"):
        stage_source(source_copy, tmp_path / "root")


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "other gzip"])
def test_corrupt_file_is_named_and_never_half_copied(tmp_path, source_copy, damage):
    path = source_copy / TRAIN_IMAGES
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "not gzip":
        path.write_bytes(b"<html>503 Service Unavailable</html>")
    else:
        path.write_bytes(gzip.compress(b"\0" * 1000))
    root = tmp_path / "root"
    with pytest.raises(DataSourceError) as err:
        stage_source(source_copy, root)
    message = str(err.value)
    assert TRAIN_IMAGES in message and MNIST_FILES[TRAIN_IMAGES] in message and "Replace it" in message
    raw = root / "mnist" / "raw"
    assert not (raw / TRAIN_IMAGES).exists(), "a bad file must not land in the data root"
    assert _no_partial_files(root)


def test_a_data_root_holding_the_verified_archives_needs_no_source(tmp_path, data_root):
    """Archives already in the data root with their official md5s are used as they are: an empty source is not
    consulted (nor a missing one)."""
    from models.data import check_source

    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "nowhere"):
        check_source(source, data_root, MNIST)
        assert _stage(source, data_root, MNIST) == data_root / "mnist" / "raw"


def test_source_is_only_read(tmp_path, source_copy):
    before = {p.name: p.stat().st_mtime_ns for p in source_copy.iterdir()}
    stage_source(source_copy, tmp_path / "root")
    assert {p.name: p.stat().st_mtime_ns for p in source_copy.iterdir()} == before


def test_download_failure_says_to_use_the_offline_source(tmp_path, monkeypatch):
    import tasks.ingest as ingest

    def offline(root, spec, download=False):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(ingest, "load_dataset", offline)
    with pytest.raises(ingest.DownloadError, match="DIGITGEN_DATA_SOURCE"):
        ingest.download_data.fn("mnist", tmp_path / "root", None)
    # retried with growing back-off, but not when the offline source itself is bad
    assert ingest.download_data.retries == 3
    delays = ingest.download_data.retry_delay_seconds
    assert list(delays) == sorted(delays) and delays[0] < delays[-1]

    class _State:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=False):
            return self.exc

    assert ingest._retry_network_errors(None, None, _State(ingest.DownloadError("x")))
    assert not ingest._retry_network_errors(None, None, _State(DataSourceError("x")))
    assert not ingest._retry_network_errors(None, None, _State(ingest.LocalDataError("disk full")))


# --- settings ----------------------------------------------------------------------------------------------------


def test_flow_parameters_are_validated_before_any_work(tmp_path, data_root):
    from pydantic import ValidationError

    from flows.pipeline import digit_pipeline

    with pytest.raises(ValidationError, match="epochs"):
        digit_pipeline.fn(epochs=0, out=tmp_path / "out", data_root=data_root)
    with pytest.raises(ValidationError, match="latent_dim"):
        digit_pipeline.fn(latent_dim=0, out=tmp_path / "out", data_root=data_root)
    assert not (tmp_path / "out").exists()


def test_prefect_yaml_parameters_are_checked():
    from digitgen.serve import check_parameters, load_deployment_specs

    specs = load_deployment_specs()
    check_parameters(specs)  # the shipped file is valid
    bad = [{**specs[0], "parameters": {"epochs": -3}}]
    with pytest.raises(ValueError, match=r"(?s)'nightly'.*epochs"):
        check_parameters(bad)


# --- atomic writes -----------------------------------------------------------------------------------------------


def test_a_crash_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    with pytest.raises(TypeError):
        write_json(target, {"new": object()})  # fails half-way through serialising
    assert json.loads(target.read_text()) == {"old": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"old": 1}
    assert _no_partial_files(tmp_path)


def test_a_crash_while_saving_a_checkpoint_leaves_the_old_one(tmp_path, monkeypatch):
    from models import VAE, load_checkpoint

    path = tmp_path / "vae.pt"
    model = VAE(4, (8,))
    save_checkpoint(path, {"arch": model.arch(), "model": model.state_dict()})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"arch": model.arch(), "model": model.state_dict()})
    monkeypatch.setattr(torch, "save", real_save)
    assert isinstance(load_checkpoint(path), VAE)
    assert _no_partial_files(tmp_path)


# --- the report --------------------------------------------------------------------------------------------------


def _metrics(device: str = "cpu"):
    """A run's metrics.json, made up."""
    from models.scores import RunMetrics

    quality = {
        "inception_score": 9.0,
        "frechet_distance": 3.0,
        "class_histogram": [0.1] * 10,
        "knn_accuracy": 0.9,
        "active_units": 4,
    }
    drawn = {k: quality[k] for k in ("inception_score", "frechet_distance", "class_histogram")}
    quality["samplers"] = {"prior": drawn, "gmm": {**drawn, "frechet_distance": 1.0}}
    metrics = {
        "vae": {
            "test_recon_nats": 80.0,
            "test_kl_nats": 20.0,
            "test_neg_elbo_nats": 100.0,
            "test_nll_is_nats": 97.0,
            "test_nll_is_stderr": 0.2,
            "is_samples": 10,
            "prior_mismatch_nats": 1.0,
            **quality,
        },
        "ae": {"test_recon_nats": 70.0, "prior_mismatch_nats": 50.0, **quality},
        "test_digits": {"inception_score": 9.9},
        "classifier": {"test_accuracy": 0.99},
        "quality_samples": 100,
        "train_seconds": {"vae": 1.0, "ae": 1.0},
        "n_train": 10,
        "n_test": 10,
        "dataset": "mnist",
        "data_version": None,
        "epochs": 1,
        "history": {"vae": [], "ae": []},
        "device": device,
    }
    return RunMetrics.model_validate(metrics)


def test_report_escapes_embedded_text(tmp_path):
    from digitgen.config import PipelineConfig
    from tasks.report import render

    metrics = _metrics(device="<script>alert(1)</script>")
    figures = {}
    for key in [
        "samples_vae",
        "samples_ae",
        "reconstructions",
        "latent_scatter",
        "latent_grid",
        "interpolation",
        "curves",
    ]:
        figures[key] = str(tmp_path / f"{key}.png")
        Path(figures[key]).write_bytes(b"\x89PNG")
    decision = Decision(promoted=True, challenger=97.0)
    text = render(PipelineConfig(run_name="r1"), metrics, decision, figures, inline=True)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert text.count("data:image/png;base64,") == 7
    assert "grey-level MNIST" in text and "do not compare" in text and "pixel head" not in text
    assert "a density fitted after training beats its own prior" in text  # the sampler section, from the numbers
    quality = render(PipelineConfig(run_name="r1", preset="quality"), metrics, decision, figures, inline=False)
    assert "dynamically binarized" in quality and "with a pixel head" in quality and "over 2 epochs" in quality
    # the quality preset's VAE learns its prior: the report says so instead of speaking of N(0, I)
    assert "100-component Gaussian mixture" in quality and "the mixture prior it learned" in quality
    assert "KL to the prior (learned mixture)" in quality and "KL to the prior N(0, I)" in text
    assert "a density fitted after training, one per class, beats it" in quality
    metrics.vae.samplers["gmm"].frechet_distance = 5.0  # the learned prior samples better than the fitted mixtures
    quality = render(PipelineConfig(run_name="r1", preset="quality"), metrics, decision, figures, inline=False)
    assert "The prior learned with the VAE samples as well as a density fitted after training" in quality


def test_a_metric_added_to_the_spec_appears_in_the_table_artifact_the_report_and_the_log(monkeypatch):
    """One description per reported metric (models.scores.METRICS) renders all three."""
    from digitgen.config import PipelineConfig
    from models import scores
    from tasks.evaluate import metrics_table
    from tasks.report import render

    metrics = _metrics()
    added = scores.Metric(
        "knn_accuracy",
        "Codes: a new measure of {items}",
        "newmeasure",
        unit="",
        better="higher",
        fmt=".4f",
        models=("ae",),
    )
    monkeypatch.setattr(scores, "METRICS", [*scores.METRICS, added])
    context = scores.metric_context(metrics, ("zero",) * 10, "digits", "normal", 16)
    rows = metrics_table(metrics, context)
    assert {"metric": "Codes: a new measure of digits (higher is better)", "VAE": "-", "AE": "0.9000"} in rows
    assert rows[-1]["metric"] == "Samples from gmm: Inception score, Fréchet distance", "then each fitted sampler"
    report = render(PipelineConfig(run_name="r1"), metrics, Decision(promoted=True, challenger=97.0), {}, inline=True)
    assert "| Codes: a new measure of digits (higher is better) | - | 0.9000 |" in report
    assert "newmeasure - | 0.9000" in scores.metric_line(metrics, context)
    assert "NLL(k=10) 97.00 ± 0.20 | -" in scores.metric_line(metrics, context)  # the spec's own, with its error


KEPT = {
    "promoted": False,
    "champion": 90.0,
    "challenger": 97.0,
    "difference_nats": 7.0,
    "difference_se": 0.05,
    "margin_nats": 0.5,
    "paired": True,
}  # a decision of the gate: the champion stays


def test_markdown_planted_in_the_champion_record_stays_text(tmp_path):
    """A run name in champion.json cannot become a live link or a remote image in the report or the UI."""
    from tasks.report import gate_line

    planted = "[click](javascript:alert(1))![x](http://evil.example/x.png)<img src=x>"
    line = gate_line(Decision(**KEPT, champion_run=planted))
    assert "](javascript:" not in line and "](http" not in line and "<img" not in line
    assert "click" in line and "evil.example" in line, "the text itself is still shown"
    plain = gate_line(Decision(**KEPT, champion_run="run (2) c+d #3"))
    assert "run (2) c+d #3" in plain, "the raw report reads plainly: no \\( or \\+ where nothing needs escaping"


def test_figures_stay_small_enough_for_the_report_artifact(tmp_path):
    """A run's latent scatter has 10,000 points a panel; as matplotlib's RGBA PNG it took 350 KB, and the report
    artifact that embeds every figure went over the 1.5 MB Prefect publishes as an event."""
    from PIL import Image

    from models.plots import save_latent_scatter

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (10_000,), generator=g)
    xy = torch.randn(10_000, 2, generator=g) + 0.3 * labels[:, None].float()
    path = save_latent_scatter(
        tmp_path / "scatter.png", [("VAE", xy, ""), ("AE", 3 * xy, "")], labels, tuple(str(c) for c in range(10))
    )
    assert path.stat().st_size < 200_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1000
    assert _no_partial_files(tmp_path)


def _widest_blank_band(path) -> float:
    """The tallest run of all-white pixel rows inside a figure (its outer margins aside), as a share of its height."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(path).convert("L"))
    blank = (grey > 250).all(axis=1)
    inside = np.flatnonzero(~blank)
    run = longest = 0
    for b in blank[inside[0] : inside[-1] + 1]:
        run = run + 1 if b else 0
        longest = max(longest, run)
    return longest / grey.shape[0]


def test_image_figures_keep_no_empty_band_under_their_titles(tmp_path):
    """samplers.png, on_demand.png and the generate grids: the title sits on the images (the square panels of a
    tall figure used to leave a white band a tenth of its height under the title and between the rows)."""
    from models.plots import save_image_panels, save_labelled_grid, save_rows

    x = torch.rand(36, 1, 28, 28)
    figures = [
        save_image_panels(tmp_path / "samplers.png", [(f"panel {i}", x, 6) for i in range(4)], "Decoded draws", cols=2),
        save_rows(tmp_path / "on_demand.png", [(str(c), x[:10]) for c in range(10)], "One row per class"),
        save_labelled_grid(tmp_path / "grid.png", x[:16], [str(i % 10) for i in range(16)], "16 generated digits"),
    ]
    for figure in figures:
        assert _widest_blank_band(figure) < 0.05, figure.name  # 0.09-0.14 before


def test_a_data_root_never_holds_two_names_that_differ_only_in_case(tmp_path, data_source):
    """The archives live in the dataset's own folder (`mnist/raw/`), not torchvision's `MNIST/raw/` beside `mnist/`
    (one folder on a file system blind to case); a data root laid out the old way is moved over, not copied again."""
    from models.data import dataset_fingerprint, load_dataset

    root = tmp_path / "data"
    _stage(data_source, root, MNIST)
    load_dataset(root, MNIST, download=True)  # extracts the staged archives; no network
    names = [p.relative_to(root).as_posix().lower() for p in root.rglob("*")]
    assert len(names) == len(set(names)) and (root / "mnist" / "raw" / "train-images-idx3-ubyte").is_file()
    assert not (root / "MNIST").exists() or (root / "MNIST").samefile(root / "mnist")  # one folder: blind to case
    fingerprint = dataset_fingerprint(root, MNIST)
    old = tmp_path / "old"
    (old / "MNIST").mkdir(parents=True)
    (root / "mnist" / "raw").rename(old / "MNIST" / "raw")  # as an earlier digitgen left it
    inode = (old / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").stat().st_ino
    assert _stage(tmp_path / "nowhere", old, MNIST) == old / "mnist" / "raw", "no source needed: the files are there"
    assert (old / "mnist" / "raw" / "train-images-idx3-ubyte.gz").stat().st_ino == inode
    assert not (old / "MNIST").exists() or (old / "MNIST").samefile(old / "mnist")
    assert dataset_fingerprint(old, MNIST) == fingerprint and len(load_dataset(old, MNIST).train_labels) == 60_000


def test_an_old_data_root_that_cannot_be_moved_over_says_how_to_move_it(tmp_path, data_source, monkeypatch):
    """torchvision's MNIST/raw on another disk (a link) cannot be renamed: one error naming both folders and the
    command, never a traceback or a download retry."""
    import errno

    root = tmp_path / "data"
    (root / "MNIST").mkdir(parents=True)
    (root / "MNIST" / "raw").mkdir()

    def cross_device(self, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(Path, "rename", cross_device)
    with pytest.raises(
        DataSourceError, match="cannot be moved to .*Invalid cross-device link.*: move them there \\(mv "
    ):
        _stage(data_source, root, MNIST)
