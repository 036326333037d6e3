"""Data checks with Great Expectations 1.x: a per-image summary table and split-level facts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd
import torch

from models.data import Mnist

EXPECTED_ROWS = {"train": 60_000, "test": 10_000}
IMAGE_SIDE = 28
CLASS_SHARE = (0.08, 0.12)  # every digit is 8% to 12% of its split
INK_RANGE = (0.005, 0.6)  # share of pixels above half intensity; 0 means a blank image


def summary_table(images: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """One row per image: label, mean/min/max intensity in [0, 1], ink fraction, height, width."""
    x = images.reshape(images.shape[0], -1).float() / 255.0 if images.dtype == torch.uint8 else images.flatten(1)
    return pd.DataFrame({
        "label": labels.numpy(),
        "mean": x.mean(1).numpy(),
        "min": x.amin(1).numpy(),
        "max": x.amax(1).numpy(),
        "ink": (x > 0.5).float().mean(1).numpy(),
        "height": images.shape[-2],
        "width": images.shape[-1],
    })  # fmt: skip


def class_table(labels: pd.Series) -> pd.DataFrame:
    """One row per digit 0..9 with its share of the split (0 for a missing digit)."""
    shares = labels.value_counts(normalize=True).reindex(range(10), fill_value=0.0)
    return pd.DataFrame({"label": shares.index, "share": shares.to_numpy()})


@dataclass
class ValidationReport:
    success: bool
    results: list[dict] = field(default_factory=list)  # one per expectation and split

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]


def _image_suite(gx, gxe, name: str, rows: int):
    suite = gx.ExpectationSuite(name=name)
    for e in [
        gxe.ExpectTableRowCountToEqual(value=rows),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=9),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=list(range(10))),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("mean", "min", "max", "ink")],
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0) for c in ("mean", "min", "max")],
        gxe.ExpectColumnValuesToBeBetween(column="ink", min_value=INK_RANGE[0], max_value=INK_RANGE[1]),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=IMAGE_SIDE, max_value=IMAGE_SIDE),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=IMAGE_SIDE, max_value=IMAGE_SIDE),
    ]:
        suite.add_expectation(e)
    return suite


def _class_suite(gx, gxe, name: str):
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(gxe.ExpectTableRowCountToEqual(value=10))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="share", min_value=CLASS_SHARE[0], max_value=CLASS_SHARE[1])
    )
    return suite


def validate_tables(tables: dict[str, pd.DataFrame], expected_rows: dict[str, int] = EXPECTED_ROWS) -> ValidationReport:
    """Run the suites on {split: summary_table} with an ephemeral Great Expectations context."""
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import great_expectations as gx  # imported here: it takes seconds
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # the task logs the outcome instead
    source = context.data_sources.add_pandas("mnist")
    batch_defs = {
        t: source.add_dataframe_asset(name=t).add_batch_definition_whole_dataframe("all") for t in ("images", "classes")
    }
    report = ValidationReport(success=True)
    for split, table in tables.items():
        checks = [
            ("images", table, _image_suite(gx, gxe, f"{split}-images", expected_rows[split])),
            ("classes", class_table(table["label"]), _class_suite(gx, gxe, f"{split}-classes")),
        ]
        for kind, frame, suite in checks:
            result = batch_defs[kind].get_batch(batch_parameters={"dataframe": frame}).validate(suite)
            for r in result.results:
                kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id",)}
                report.results.append({
                    "split": split,
                    "table": kind,
                    "expectation": r.expectation_config.type,
                    "kwargs": kwargs,
                    "success": bool(r.success),
                    "observed": r.result.get("observed_value"),
                    "unexpected_count": r.result.get("unexpected_count"),
                    "unexpected_examples": list(r.result.get("partial_unexpected_list") or [])[:5],
                })  # fmt: skip
            report.success &= bool(result.success)
    return report


def validate_mnist(data: Mnist) -> ValidationReport:
    """Validate both splits of MNIST."""
    tables = {
        "train": summary_table(data.train_images, data.train_labels),
        "test": summary_table(data.test_images, data.test_labels),
    }
    return validate_tables(tables)
