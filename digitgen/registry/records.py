"""The champion record of the days before MLflow: one JSON file, read once to import it into the registry
(digitgen/registry/tracking.py).

{"run_dir", "run_name", "metric", "value", "evaluation": {"is_samples", "n_test", "seed"}, "promoted_at", "history"}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from digitgen.errors import DigitgenError

METRIC = "test_nll_is_nats"  # lower is better


class ChampionRecordError(DigitgenError, RuntimeError):
    """The champion record exists but is not one."""


RECORD_KEYS = {"run_dir", "run_name", "value", "evaluation"}


def read_champion(path: Path) -> dict | None:
    """The current champion, or None when there is none yet; a clear error naming the file when it is damaged."""
    hint = "restore it from a backup, or delete it to start over (the next run becomes champion)"
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ChampionRecordError(f"champion record {path} is not valid JSON ({e}); {hint}") from None
    if not isinstance(record, dict) or not RECORD_KEYS <= record.keys() or not isinstance(record["value"], int | float):
        raise ChampionRecordError(
            f"champion record {path} is not a champion record (it needs {sorted(RECORD_KEYS)}); {hint}"
        )
    if not math.isfinite(record["value"]):
        raise ChampionRecordError(f"champion record {path} is damaged: its value is {record['value']}; {hint}")
    return record


def decisions_path(path: Path) -> Path:
    """Every committed gate decision on this record, promoted or rejected: `<record>-decisions.json` beside it."""
    return Path(path).with_name(Path(path).stem + "-decisions.json")


def read_decisions(path: Path) -> list[dict]:
    """The decisions on the champion record at `path`, oldest first ([] when there is no log). A log that does not
    parse is history that would be lost: a clear error naming the file, never an empty list."""
    log = decisions_path(path)
    try:
        found = json.loads(log.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ChampionRecordError(
            f"decision log {log} cannot be read ({e}); repair or restore it (it is imported "
            "into MLflow once, and never rewritten), or move it away to import without it"
        ) from None
    if not isinstance(found, list) or not all(isinstance(d, dict) for d in found):
        raise ChampionRecordError(
            f"decision log {log} is not a list of decisions; repair or restore it, or move it away to import without it"
        )
    return found


def json_record_path(out: Path, champion_stem: str, binarize: str = "none") -> Path:
    """Where the JSON champion record of the days before MLflow was kept (imported once, on first use)."""
    return Path(out) / (f"{champion_stem}.json" if binarize == "none" else f"{champion_stem}-binarized.json")
