"""Stage 2: Great Expectations checks that must pass before any training starts."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import INPUTS

from models.data import load_mnist
from models.validation import ValidationReport, validate_mnist
from tasks.common import logger, table_artifact


class DataValidationError(ValueError):
    """The data failed one or more expectations."""


def publish(report: ValidationReport) -> None:
    """Table artifact of every expectation; raise listing the failed ones."""
    rows = [
        {"split": r["split"], "table": r["table"], "expectation": r["expectation"],
         "arguments": ", ".join(f"{k}={v}" for k, v in r["kwargs"].items()),
         "success": r["success"], "observed": str(r["observed"]) if r["observed"] is not None else "",
         "unexpected": r["unexpected_count"] or 0, "examples": str(r["unexpected_examples"])}
        for r in report.results
    ]  # fmt: skip
    failed = [r for r in rows if not r["success"]]
    verdict = "passed" if report.success else f"FAILED ({len(failed)} expectations)"
    table_artifact("data-validation", failed + [r for r in rows if r["success"]], f"MNIST validation {verdict}")
    if failed:
        lines = "\n".join(
            f"  - {r['split']}/{r['table']}: {r['expectation']}({r['arguments']}) observed={r['observed'] or '-'} "
            f"unexpected={r['unexpected']} e.g. {r['examples']}"
            for r in failed
        )
        raise DataValidationError(
            f"MNIST failed {len(failed)} data expectations, so no model was trained:\n{lines}\n"
            "Check the data source files (or delete the data root to fetch them again)."
        )


@task(cache_policy=INPUTS, persist_result=True)  # keyed on the data's fingerprint: unchanged data is not re-checked
def validate_data(data_root: str, fingerprint: str) -> dict:
    """Validate both splits; stop the flow if any expectation fails."""
    report = validate_mnist(load_mnist(data_root))
    publish(report)
    logger().info("Data validation passed: %d expectations on fingerprint %s", len(report.results), fingerprint)
    return {"expectations": len(report.results), "fingerprint": fingerprint}
