"""Data checks with Great Expectations 1.x: a per-image summary table and split-level facts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch

from digitgen.data.datasets import DatasetSpec
from digitgen.data.loading import Splits

STATS_CHUNK = 4096  # images whose float copies exist at once: a 60,000-image training set costs 13 MB, not 750


def image_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image facts of uint8 [N, H, W] (or float in [0, 1]): mean/min/max intensity, ink fraction, border mean.
    Computed a chunk of images at a time: memory does not grow with the number of images."""
    if len(images) <= STATS_CHUNK:
        return _image_stats(images)
    parts = [_image_stats(chunk) for chunk in images.split(STATS_CHUNK)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _image_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    x = images.reshape(images.shape[0], -1).float() / 255.0 if images.dtype == torch.uint8 else images.flatten(1)
    side = images.reshape(images.shape[0], *images.shape[-2:]).float()
    side = side / 255.0 if images.dtype == torch.uint8 else side
    ring = torch.cat([side[:, 0, :], side[:, -1, :], side[:, 1:-1, 0], side[:, 1:-1, -1]], dim=1)
    return {
        "mean": x.mean(1),
        "min": x.amin(1),
        "max": x.amax(1),
        "ink": (x > 0.5).float().mean(1),  # share of pixels that are strokes
        "border": ring.mean(1),  # the outer ring: dark in every official image, bright when inverted
    }


def summary_table(images: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """One row per image: label, mean/min/max intensity in [0, 1], ink fraction, height, width."""
    stats = image_stats(images)
    table = {"label": labels.numpy(), **{k: stats[k].numpy() for k in ("mean", "min", "max", "ink")}}
    return pd.DataFrame({**table, "height": images.shape[-2], "width": images.shape[-1]})


def class_table(labels: pd.Series, n_classes: int) -> pd.DataFrame:
    """One row per class with its share of the split (0 for a missing class)."""
    shares = labels.value_counts(normalize=True).reindex(range(n_classes), fill_value=0.0)
    return pd.DataFrame({"label": shares.index, "share": shares.to_numpy()})


@dataclass
class ValidationReport:
    success: bool
    results: list[dict] = field(default_factory=list)  # one per expectation and split

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]


# A check: (split, table name, data frame, expectations built from the `great_expectations.expectations` module).
Check = tuple[str, str, pd.DataFrame, Callable[[object], list]]


def run_checks(checks: list[Check], index_column: str | None = None) -> ValidationReport:
    """Run each check with an ephemeral Great Expectations context (pandas data source).

    `index_column`: a column naming each row (a file name); the rows that fail an expectation are reported by it.
    """
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import great_expectations as gx  # imported here: it takes seconds
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # the task logs the outcome instead
    source = context.data_sources.add_pandas("data")
    report = ValidationReport(success=True)
    for i, (split, kind, frame, build) in enumerate(checks):
        suite = gx.ExpectationSuite(name=f"{split}-{kind}")
        for expectation in build(gxe):
            suite.add_expectation(expectation)
        result_format = {"result_format": "SUMMARY"}
        if index_column in frame.columns:
            result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]}
        batch_def = source.add_dataframe_asset(name=f"{split}-{kind}-{i}").add_batch_definition_whole_dataframe("all")
        result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format=result_format)
        for r in result.results:
            kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id",)}
            rows = [row.get(index_column) for row in r.result.get("unexpected_index_list") or []]
            report.results.append(
                {
                    "split": split,
                    "table": kind,
                    "expectation": r.expectation_config.type,
                    "kwargs": kwargs,
                    "success": bool(r.success),
                    "observed": _plain(r.result.get("observed_value")),
                    "unexpected_count": r.result.get("unexpected_count"),
                    "element_count": r.result.get("element_count"),
                    "unexpected_examples": [_plain(v) for v in list(r.result.get("partial_unexpected_list") or [])[:5]],
                    "unexpected_rows": [str(v) for v in rows[:20]],
                }
            )
        report.success &= bool(result.success)
    return report


def _plain(value):
    """numpy scalars -> Python numbers, so results serialize as JSON."""
    return value.item() if hasattr(value, "item") else value


def split_checks(spec: DatasetSpec, split: str, table: pd.DataFrame, rows: int) -> list[Check]:
    """The expectations every official split meets: size, labels, intensities, ink, shape, class balance."""
    h, w = spec.image_shape
    classes = list(range(spec.n_classes))

    def images(gxe) -> list:
        return [
            gxe.ExpectTableRowCountToEqual(value=rows),
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=spec.n_classes - 1),
            gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=classes),
            *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("mean", "min", "max", "ink")],
            *[
                gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0)
                for c in ("mean", "min", "max")
            ],
            gxe.ExpectColumnValuesToBeBetween(column="ink", min_value=spec.ink_range[0], max_value=spec.ink_range[1]),
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=h, max_value=h),
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=w, max_value=w),
        ]

    def shares(gxe) -> list:
        lo, hi = spec.class_share
        return [
            gxe.ExpectTableRowCountToEqual(value=spec.n_classes),
            gxe.ExpectColumnValuesToBeBetween(column="share", min_value=lo, max_value=hi),
        ]

    return [(split, "images", table, images), (split, "classes", class_table(table["label"], spec.n_classes), shares)]


def validate_tables(
    spec: DatasetSpec, tables: dict[str, pd.DataFrame], expected_rows: dict[str, int]
) -> ValidationReport:
    """Run the split suites on {split: summary_table}."""
    return run_checks([c for split, t in tables.items() for c in split_checks(spec, split, t, expected_rows[split])])


def validate_splits(spec: DatasetSpec, data: Splits) -> ValidationReport:
    """Validate both official splits of a dataset."""
    tables = {
        "train": summary_table(data.train_images, data.train_labels),
        "test": summary_table(data.test_images, data.test_labels),
    }
    return validate_tables(spec, tables, {"train": spec.n_train, "test": spec.n_test})
