"""Stage 2: Great Expectations checks that must pass before any training starts."""

from __future__ import annotations

import hashlib
import inspect

from prefect import task

import models.validation
from models.data import load_dataset
from models.datasets import get_dataset
from models.errors import DigitgenError
from models.validation import ValidationReport, validate_splits
from tasks.common import logger, table_artifact


class DataValidationError(DigitgenError, ValueError):
    """The data failed one or more expectations."""


def artifact_rows(report: ValidationReport) -> list[dict]:
    """One table row per expectation, failures first."""
    rows = [
        {"split": r["split"], "table": r["table"], "expectation": r["expectation"],
         "arguments": ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())[:80],
         "success": r["success"], "observed": str(r["observed"]) if r["observed"] is not None else "",
         "unexpected": r["unexpected_count"] or 0,
         "examples": str(r.get("unexpected_rows") or r["unexpected_examples"])[:60]}
        for r in report.results
    ]  # fmt: skip
    return [r for r in rows if not r["success"]] + [r for r in rows if r["success"]]


def publish(report: ValidationReport, title: str) -> None:
    """Table artifact of every expectation; raise listing the failed ones."""
    rows = artifact_rows(report)
    failed = [r for r in rows if not r["success"]]
    verdict = "passed" if report.success else f"FAILED ({len(failed)} expectations)"
    table_artifact("data-validation", rows, f"{title} validation {verdict}")
    if failed:
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
    """The data's fingerprint and the checks themselves: a changed suite or threshold re-runs validation."""
    checks = inspect.getsource(models.validation) + repr(get_dataset(parameters["dataset"]))
    code = hashlib.sha256(checks.encode()).hexdigest()[:12]
    return f"validate-{parameters['dataset']}-{parameters['fingerprint']}-{code}"


@task(cache_key_fn=_suite_key, persist_result=True)  # unchanged data and checks are not re-checked
def validate_data(dataset: str, data_root: str, fingerprint: str) -> dict:
    """Validate both official splits; stop the flow if any expectation fails."""
    spec = get_dataset(dataset)
    report = validate_splits(spec, load_dataset(data_root, spec))
    publish(report, spec.title)
    logger().info("Data validation passed: %d expectations on fingerprint %s", len(report.results), fingerprint)
    return {"expectations": len(report.results), "fingerprint": fingerprint}
