"""Stage 2: Great Expectations checks that must pass before any training starts."""

from __future__ import annotations

import hashlib
import inspect
import sys
import time

from prefect import task
from prefect.cache_policies import NONE

import digitgen.data.validation
from digitgen.data.datasets import get_dataset
from digitgen.data.loading import load_dataset
from digitgen.data.validation import ValidationReport, validate_splits
from digitgen.errors import DigitgenError
from tasks.common import logger, table_artifact


class DataValidationError(DigitgenError, ValueError):
    """The data failed one or more expectations."""


def artifact_rows(report: ValidationReport) -> list[dict]:
    """One table row per expectation, failures first."""
    rows = [
        {
            "split": r["split"],
            "table": r["table"],
            "expectation": r["expectation"],
            "arguments": ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())[:80],
            "success": r["success"],
            "observed": str(r["observed"]) if r["observed"] is not None else "",
            "unexpected": r["unexpected_count"] or 0,
            "examples": str(r.get("unexpected_rows") or r["unexpected_examples"])[:60],
        }
        for r in report.results
    ]
    return [r for r in rows if not r["success"]] + [r for r in rows if r["success"]]


def raise_failures(rows: list[dict], title: str) -> None:
    """The failed expectations' table artifact, then an error listing them (nothing to do when all passed)."""
    failed = [r for r in rows if not r["success"]]
    if failed:
        table_artifact("data-validation", rows, f"{title} validation FAILED ({len(failed)} expectations)")
        lines = "\n".join(
            f"  - {r['split']}/{r['table']}: {r['expectation']}({r['arguments']}) observed={r['observed'] or '-'} "
            f"unexpected={r['unexpected']} e.g. {r['examples']}"
            for r in failed
        )
        raise DataValidationError(
            f"{title} failed {len(failed)} data expectations, so no model was trained:\n{lines}\n"
            "Check the data source files (or delete the data root to fetch them again)."
        )


def _suite_key(context, parameters: dict) -> str:
    """The data's fingerprint and the checks themselves (the suite's code and thresholds, the dataset's description,
    this task's code): any change re-runs validation."""
    checks = (
        inspect.getsource(digitgen.data.validation)
        + repr(get_dataset(parameters["dataset"]))
        + inspect.getsource(sys.modules[__name__])
    )
    code = hashlib.sha256(checks.encode()).hexdigest()[:12]
    return f"validate-{parameters['dataset']}-{parameters['fingerprint']}-{code}"


@task(cache_key_fn=_suite_key, persist_result=True)  # unchanged data and checks are not re-checked
def validate_data(dataset: str, data_root: str, fingerprint: str) -> dict:
    """Validate both official splits; stop the flow if any expectation fails. The result (cached) keeps every
    expectation's row, which `show_validation` publishes."""
    spec = get_dataset(dataset)
    report = validate_splits(spec, load_dataset(data_root, spec))
    rows = artifact_rows(report)
    raise_failures(rows, spec.title)
    logger().info("Data validation passed: %d expectations on fingerprint %s", len(report.results), fingerprint)
    return {
        "expectations": len(rows),
        "fingerprint": fingerprint,
        "rows": rows,
        "title": spec.title,
        "checked_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


@task(cache_policy=NONE)
def show_validation(result: dict, cached: bool) -> None:
    """The `data-validation` table artifact of every run, also when validation came from the cache."""
    how = f"reused from the cache (data and checks unchanged since {result['checked_at']})" if cached else "checked now"
    table_artifact(
        "data-validation",
        result["rows"],
        f"{result['title']} validation passed: {result['expectations']} expectations, {how}",
    )
