"""The champion record: one JSON file, updated under a file lock and written atomically.

{"run_dir", "run_name", "metric", "value", "evaluation": {"is_samples", "n_test", "seed"}, "promoted_at", "history"}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path

from models.errors import DigitgenError
from models.io import write_json

METRIC = "test_nll_is_nats"  # lower is better


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` so concurrent runs update the record one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    return record


def decisions_path(path: Path) -> Path:
    """Every committed gate decision on this record, promoted or rejected: `<record>-decisions.json` beside it."""
    return Path(path).with_name(Path(path).stem + "-decisions.json")


def read_decisions(path: Path) -> list[dict]:
    """The decisions on the champion record at `path`, oldest first ([] when none, or when the log is unreadable:
    it is a history for people, never an input to a decision)."""
    try:
        found = json.loads(decisions_path(path).read_text())
    except (OSError, ValueError):
        return []
    return found if isinstance(found, list) else []


DECISIONS_KEPT = 500


def log_decision(path: Path, candidate: dict, decision: dict) -> None:
    """Append a decision to the log (atomically rewritten; the newest DECISIONS_KEPT are kept). Call under the lock."""
    entry = {"run_name": candidate["run_name"], "value": candidate["value"], "promoted": decision["promoted"],
             "champion_run": decision["champion_run"], "champion_value": decision["champion"],
             "data_version": candidate.get("data_version"), "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    write_json(decisions_path(path), [*read_decisions(path), entry][-DECISIONS_KEPT:])


def challenge(path: Path, candidate: dict, score_champion, commit: bool = True) -> dict:
    """Promote `candidate` if its metric beats the champion's under the same evaluation settings.

    `candidate`: {"run_dir", "run_name", "value", "evaluation"}. `score_champion(champion)` re-scores the
    champion's model under the candidate's evaluation settings (called only when the settings differ) and
    returns its metric, or None when the champion's model is gone. `commit=False` decides without writing.
    Returns the decision.
    """
    path = Path(path)
    with locked(path):
        champion = read_champion(path)
        old = None
        if champion is not None and champion["run_dir"] == candidate["run_dir"]:
            # the same run again (resumed after its promotion): it stays the champion, its record untouched
            return {"promoted": True, "metric": METRIC, "challenger": candidate["value"], "champion": None,
                    "champion_run": None, "already_champion": True, "evaluation": candidate["evaluation"]}  # fmt: skip
        if champion is not None:
            same = champion.get("evaluation") == candidate["evaluation"]
            old = champion["value"] if same else score_champion(champion)
        promoted = old is None or candidate["value"] < old
        decision = {
            "promoted": promoted,
            "metric": METRIC,
            "challenger": candidate["value"],
            "champion": old,
            "champion_run": champion["run_name"] if champion else None,
            "evaluation": candidate["evaluation"],
        }
        if commit:
            log_decision(path, candidate, decision)
        if promoted and commit:
            history = (champion or {}).get("history", [])[-19:]
            if champion:
                history.append({k: champion.get(k) for k in ("run_name", "value", "promoted_at", "data_version")})
            write_json(path, {**candidate, "metric": METRIC, "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "history": history})  # fmt: skip
        return decision
