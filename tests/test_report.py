"""The report and its figures: embedded text stays text, one metric spec renders every table, the gate's line, and
figures that fit the report artifact with no empty band under their titles."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import no_partial_files

from digitgen.registry.gate import Decision


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
    from digitgen.figures.report import render

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
    from digitgen.figures.report import render
    from models import scores
    from tasks.evaluate import metrics_table

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
    from digitgen.figures.report import gate_line

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

    from digitgen.figures.plots import save_latent_scatter

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (10_000,), generator=g)
    xy = torch.randn(10_000, 2, generator=g) + 0.3 * labels[:, None].float()
    path = save_latent_scatter(
        tmp_path / "scatter.png", [("VAE", xy, ""), ("AE", 3 * xy, "")], labels, tuple(str(c) for c in range(10))
    )
    assert path.stat().st_size < 200_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1000
    assert no_partial_files(tmp_path)


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
    from digitgen.figures.plots import save_image_panels, save_labelled_grid, save_rows

    x = torch.rand(36, 1, 28, 28)
    figures = [
        save_image_panels(tmp_path / "samplers.png", [(f"panel {i}", x, 6) for i in range(4)], "Decoded draws", cols=2),
        save_rows(tmp_path / "on_demand.png", [(str(c), x[:10]) for c in range(10)], "One row per class"),
        save_labelled_grid(tmp_path / "grid.png", x[:16], [str(i % 10) for i in range(16)], "16 generated digits"),
    ]
    for figure in figures:
        assert _widest_blank_band(figure) < 0.05, figure.name  # 0.09-0.14 before
