"""What every task shares: the run logger, and artifacts only inside a run."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError


def in_run() -> bool:
    """True inside a Prefect flow or task run (False when a stage is called as a plain function)."""
    try:
        get_run_context()
        return True
    except MissingContextError:
        return False


def logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger, or a plain logger when a stage runs without Prefect."""
    return get_run_logger() if in_run() else logging.getLogger("digitgen")


def table_artifact(key: str, table, description: str) -> None:
    if in_run():
        create_table_artifact(table=table, key=key, description=description)


def markdown_artifact(key: str, markdown: str, description: str) -> None:
    if in_run():
        create_markdown_artifact(markdown=markdown, key=key, description=description)


class Progress:
    """A Prefect progress artifact (0-100 %) that a long task updates as it goes; nothing outside a run."""

    def __init__(self, description: str, key: str | None = None):
        self.id = create_progress_artifact(0.0, key=key, description=description) if in_run() else None

    def update(self, fraction: float) -> None:
        if self.id is not None:
            update_progress_artifact(self.id, round(100.0 * min(max(fraction, 0.0), 1.0), 1))
