"""The whole pipeline, end to end, on 2,000 training and 1,000 test images for one epoch."""

import json
import math
from typing import NamedTuple

import pytest
import torch
from conftest import TINY

from digitgen.config import PipelineConfig
from digitgen.data.datasets import get_dataset
from digitgen.data.loading import load_dataset, to_float
from flows.pipeline import digit_pipeline
from models import AE, VAE, load_checkpoint
from models.metrics import ae_recon, vae_terms

RUN_FILES = [
    "config.json",
    "metrics.json",
    "vae.pt",
    "ae.pt",
    "vae-test-nll.pt",
    "samples_vae.png",
    "samples_ae.png",
    "reconstructions.png",
    "latent_scatter.png",
    "latent_grid.png",
    "interpolation.png",
    "report.md",
]


class ModuleRun(NamedTuple):
    """The module's tiny run: its flow parameters, its folder, the gate's alerts it emitted, its Prefect flow run."""

    params: dict
    run_dir: str
    events: list
    flow_run_id: object


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory, data_root) -> ModuleRun:
    out = tmp_path_factory.mktemp("artifacts")
    params = {**TINY, "data_root": data_root, "out": out, "run_name": "tiny"}
    events = []
    with pytest.MonkeyPatch.context() as patch:  # the model gate's alerts, as emitted
        patch.setattr("tasks.promote.emit_event", lambda **kw: events.append(kw["event"]))
        state = digit_pipeline(**params, return_state=True)
    return ModuleRun(params, state.result(), events, state.state_details.flow_run_id)


def test_run_folder_is_complete(run):
    params, run_dir, events, _ = run
    assert run_dir.endswith("tiny")
    from pathlib import Path

    folder = Path(run_dir)
    for name in RUN_FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    assert not list(folder.glob("**/*.tmp")), "no temporary files are left behind"
    assert not (folder / ".lock").exists(), "a finished run lets go of its folder"
    # a trial on part of the data is no candidate for champion: no decision logged, no alert, no gate history
    report = (folder / "report.md").read_text()
    assert "Not a candidate: this run" in report and "made with --train-limit 2000 and --test-limit 1000" in report
    from digitgen.registry.tracking import Store

    store = Store.open(folder.parent, None)
    assert store.champion("digitgen-mnist") is None and store.decisions("mnist", "digitgen-mnist") == []
    assert events == [] and not (folder / "champion-history.png").exists()
    config = PipelineConfig(**json.loads((folder / "config.json").read_text()))
    assert config.epochs == 1 and config.train_limit == 2000


def test_metrics_are_finite_and_complete(run):
    from pathlib import Path

    from models.scores import RunMetrics

    m = json.loads((Path(run.run_dir) / "metrics.json").read_text())
    typed = RunMetrics.read(Path(run.run_dir) / "metrics.json")  # the schema evaluation, the report and the gate share
    assert typed.vae.test_nll_is_nats == m["vae"]["test_nll_is_nats"] and typed.ae.samplers.keys() == {"prior", "gmm"}
    for key in ["test_recon_nats", "test_kl_nats", "test_neg_elbo_nats", "test_nll_is_nats"]:
        assert math.isfinite(m["vae"][key])
    assert m["vae"]["is_samples"] == 20
    assert math.isfinite(m["ae"]["test_recon_nats"])
    assert set(m["train_seconds"]) == {"vae", "ae"}
    assert m["n_train"] == 2000 and m["n_test"] == 1000
    assert m["vae"]["test_nll_is_nats"] < m["vae"]["test_neg_elbo_nats"]


def test_trained_models_beat_untrained_ones(run, data_root):
    from pathlib import Path

    folder = Path(run.run_dir)
    m = json.loads((folder / "metrics.json").read_text())
    test = to_float(load_dataset(data_root, get_dataset("mnist")).test_images[:1000])
    torch.manual_seed(0)
    assert m["vae"]["test_neg_elbo_nats"] < vae_terms(VAE(16, (512,)), test)["neg_elbo"] - 100
    assert m["ae"]["test_recon_nats"] < ae_recon(AE(16, (512,)), test) - 100
    vae, ae = load_checkpoint(folder / "vae.pt"), load_checkpoint(folder / "ae.pt")
    assert isinstance(vae, VAE) and isinstance(ae, AE)
    assert abs(vae_terms(vae, test)["kl"] - m["vae"]["test_kl_nats"]) < 1e-3


def test_report_is_in_the_prefect_api(run):
    """The module's run published its report and its metrics table (the API is shared: other runs' are there too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.flow_run_id])))
    by_key = {a.key: a for a in found}
    report, table = by_key["pipeline-report"], by_key["vae-metrics"]
    assert "data:image/png;base64," in report.data and "Negative ELBO" in report.data
    assert report.description == "digitgen report of run tiny" and table.description.startswith(
        "Test metrics of run tiny:"
    )
    rows = {row["metric"]: row for row in json.loads(table.data)}
    assert rows["Negative ELBO"]["AE"] == "-" and float(rows["Negative ELBO"]["VAE"]) > 0


def test_second_run_on_dask_reuses_cached_data_stages(run, data_root):
    """Unchanged data (the module's run checked it): download and validation come back Cached; training runs on a
    local Dask cluster."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    params = {**run.params, "run_name": "tiny-dask", "task_runner": "dask"}
    state = digit_pipeline(**params, return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
        states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id={"any_": [t.id for t in tasks]})
        )
    assert states["download_data"] == "Cached" and states["validate_data"] == "Cached"
    with get_client(sync_client=True) as client:
        shown = [
            a
            for a in client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            if a.key == "data-validation"
        ]
    assert len(shown) == 1 and "reused from the cache" in shown[0].description, "a cached check still shows"
    assert "expect_column_values_to_be_between" in shown[0].data
    assert states["start_run"] == "Completed"
    assert any(f.name and f.state.is_completed() for f in subflows), "training ran in the train-in-parallel subflow"
    from pathlib import Path

    folder = Path(run.params["out"]) / "tiny-dask"
    assert (folder / "vae.pt").is_file() and (folder / "ae.pt").is_file() and (folder / "report.md").is_file()


def test_quality_preset_with_pixel_head_runs_end_to_end(run, data_root):
    """The conv body with a pixel head and a learned prior: trained, scored, sampled pixel by pixel and drawn."""
    from pathlib import Path

    params = {
        **run.params,
        "preset": "quality",
        "epochs": 2,
        "is_samples": 20,
        "quality_samples": 200,
        "run_name": "px",
    }
    folder = Path(digit_pipeline(**params))
    m = json.loads((folder / "metrics.json").read_text())
    assert m["vae"]["test_nll_is_nats"] < m["vae"]["test_neg_elbo_nats"]
    vae = load_checkpoint(folder / "vae.pt")
    assert vae.head is not None and vae.prior is not None and vae.prior.components == 100
    report = (folder / "report.md").read_text()
    assert "dynamically binarized" in report and "with a pixel head" in report
    assert "100-component Gaussian mixture" in report and "KL to the prior (learned mixture)" in report
    for name in RUN_FILES:
        assert (folder / name).is_file(), name


def test_fashion_mnist_runs_end_to_end_in_its_own_words(prefect_harness, tmp_path, fashion_root):
    """Nothing is MNIST-only: Fashion-MNIST is validated, trained, judged and reported with its class names."""
    from pathlib import Path

    params = {
        "dataset": "fashion-mnist",
        "epochs": 1,
        "train_limit": 2000,
        "test_limit": 1000,
        "is_samples": 10,
        "quality_samples": 500,
        "batch_size": 128,
        "data_root": fashion_root,
        "out": tmp_path,
        "device": "cpu",
        "progress": False,
        "run_name": "fashion",
    }
    folder = Path(digit_pipeline(**params))
    m = json.loads((folder / "metrics.json").read_text())
    assert m["dataset"] == "fashion-mnist" and m["data_version"].startswith("v0-") and m["n_train"] == 2000
    assert len(m["vae"]["class_histogram"]) == 10
    report = (folder / "report.md").read_text()
    assert "Fashion-MNIST" in report and "fashion items" in report
    import re

    assert not re.search(r"\bdigits?\b", report), "digits are for MNIST only"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert any(c in report for c in classes), "the report names Fashion-MNIST classes"
    assert "Not a candidate" in report, "a trial on part of the data (the champion of Fashion-MNIST: test_tracking)"
    judges = list((fashion_root / "fashion-mnist").glob("judge-*.pt"))
    assert judges, "the judge classifier is kept per dataset"
    for name in RUN_FILES:
        assert (folder / name).is_file(), name


def test_the_readme_snippet_runs_as_written(run):
    """The Python block of the README, pointed at a real run, gives images matplotlib can show."""
    import re
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "load_checkpoint" in b)
    namespace = {}
    exec(code.replace("artifacts/<run>/vae.pt", str(Path(run.run_dir) / "vae.pt")), namespace)
    digits = namespace["digits"]
    assert tuple(digits.shape) == (16, 1, 28, 28) and float(digits.min()) >= 0 and float(digits.max()) <= 1
    plt.imshow(digits[0, 0])  # failed when the tensor required grad
    plt.close("all")


def test_report_words_follow_the_numbers_of_a_one_epoch_run(run):
    from pathlib import Path

    folder = Path(run.run_dir)
    m = json.loads((folder / "metrics.json").read_text())
    report = (folder / "report.md").read_text()
    v, a = m["vae"], m["ae"]
    vae_closer = v["frechet_distance"] < a["frechet_distance"]
    assert ("the VAE samples are closer" in report) == vae_closer
    assert ("the AE samples are closer" in report) == (not vae_closer)
    assert ("That is why the AE samples look like blends or noise" in report) <= vae_closer
    better = "reconstructs test digits" in report
    assert better == (a["test_recon_nats"] < v["test_recon_nats"])
    if v["test_nll_is_nats"] >= v["test_neg_elbo_nats"]:
        assert "nats below the negative ELBO" not in report
