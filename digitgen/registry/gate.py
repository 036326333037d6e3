"""The model gate on MLflow's registry: the decision (promote the candidate only if it beats the champion under the
same evaluation settings), the champion's files for generation, and the one-time import of the JSON champion records
of the days before MLflow. The store it works on, and its locks: digitgen/registry/tracking.py."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import BaseModel

from digitgen.registry.locks import gate_lock, writing
from digitgen.registry.records import json_record_path
from digitgen.registry.tracking import (
    ALIAS,
    METRIC,
    MODEL_FILES,
    Store,
    TrackingError,
    _now,
    _short,
    is_remote,
    model_name,
    retire_hint,
    store_uri,
)


class ChampionUnloadable(TrackingError):
    """The champion's model must be re-scored and cannot be loaded: the gate promotes nothing."""


class Decision(BaseModel):
    """The model gate's decision on one run: what the report states, the log says, `promote` commits, and the
    `digitgen.model.promoted`/`rejected` event carries (as its payload, with the run's name)."""

    promoted: bool
    challenger: float  # the run's test NLL, nats per image (importance-sampled)
    candidate: bool = True  # False: a trial (--train-limit or --test-limit), never compared
    why: str | None = None  # why the run is not a candidate
    reason: str | None = None  # why it could not be compared: the champion could not be re-scored
    metric: str = METRIC
    champion: float | None = None  # the champion's NLL under the run's evaluation settings; None: no champion yet
    rescored: bool = False  # the champion was re-scored under the run's settings (its record's differ)
    champion_recorded: float | None = None  # the champion's NLL as its record says
    champion_run: str | None = None
    champion_version: str | None = None
    evaluation: dict | None = None  # the evaluation settings the two were compared under
    model: str | None = None  # the registered model
    version: str | None = None  # the registered version that is now the champion (promoted, or already it)
    already_champion: bool = False  # the run was promoted before (its gate re-run after an interruption)
    difference_nats: float | None = None  # challenger minus champion (negative: better)
    difference_se: float | None = None  # its standard error, paired image by image
    margin_nats: float | None = None  # what the difference must be below minus
    paired: bool = False
    replicate: bool = False  # trained as the champion was, on the same data, the seed aside

    def verdict(self, done: bool = False) -> str:
        """One line for the log and the CLI: what the gate will do (`done`: what it did)."""
        if not self.candidate:
            return f"not a candidate for champion: this run was {self.why.split(', not a candidate')[0]}"
        if self.reason:
            return f"{'not promoted' if done else 'promote nothing'}: challenger {self.challenger:.2f}; {self.reason}"
        if self.already_champion:
            return f"this run is already the champion ({self.challenger:.2f} nats)"
        action = ("promoted" if done else "promote") if self.promoted else "keep the champion"
        if self.champion is None:
            return f"{action}: challenger {self.challenger:.2f} vs no champion yet"
        why = (
            "a replicate of the champion: its settings and data, the seed aside"
            if self.replicate
            else f"difference {self.difference_nats:+.2f} nats, margin {self.margin_nats:.2f}"
        )
        return (
            f"{action}: challenger {self.challenger:.2f} vs champion {self.champion_run} {self.champion:.2f} nats "
            f"({why})"
        )


Z = 2.0  # standard errors of the paired per-image difference a challenger must beat the champion by, at least


def compare(challenger: float, champion: float, mine, theirs, floor: float) -> tuple[float, float | None, float]:
    """(difference, its standard error, margin): the challenger's NLL minus the champion's (negative: better), paired
    image by image where both sides have per-image NLLs of the same test images (else the means alone, and no
    standard error), and the margin it must be below -margin by: the larger of `floor` and Z standard errors."""
    from models.metrics import standard_error

    if mine is not None and theirs is not None and len(mine) == len(theirs):
        d = mine.double() - theirs.double()
        diff, se = d.mean().item(), standard_error(d)
        return diff, se, max(floor, Z * se)
    return challenger - champion, None, floor


def decide(
    store: Store, name: str, run_id: str, candidate: dict, score_champion, commit: bool, champion_per_image=None
) -> Decision:
    """Promote the candidate if its metric beats the champion's, under the same evaluation settings, by more than the
    margin, and it is no replicate of the champion. Call under `gate_lock` (and, on a team's server, the global limit
    digitgen-champion).

    `candidate`: {"run_name", "value", "evaluation", "data_version", "run_dir", "per_image" (its per-image NLLs, or
    None), "margin" (the least margin, nats), "training" (what its weights depend on, seed aside)}.
    `score_champion(champion)` re-scores the champion's model under the candidate's settings (called only when they
    differ) and returns its per-image NLLs (or their mean); it raises ChampionUnloadable when the model cannot be
    loaded: the gate never lets a challenger replace a champion it could not compare with, and records a rejection
    whose "reason" says why and how to retire the champion on purpose. `champion_per_image(champion)`: the per-image
    NLLs the champion recorded, or None. A challenger trained as the champion was, on the same data, seed aside, is a
    replicate: the difference between them is the seed's luck, and it is never promoted. `commit`: register the
    winner and move the alias, and tag the run with the decision; else decide only. Returns the decision.
    """
    champion = store.champion(name)
    if champion is not None and champion["run_id"] == run_id:
        # the same run again (its gate re-run after a failure, or resumed): it stays the champion, untouched
        return Decision(
            promoted=True,
            metric=METRIC,
            challenger=candidate["value"],
            already_champion=True,
            evaluation=candidate["evaluation"],
            version=champion["version"],
            model=name,
        )
    old, rescored, reason, theirs = None, False, None, None
    if champion is not None:
        rescored = champion["evaluation"] != candidate["evaluation"]
        try:
            if rescored:
                scored = score_champion(champion)
                old, theirs = (scored, None) if isinstance(scored, float) else (float(scored.mean()), scored)
            else:
                old, theirs = champion["value"], champion_per_image(champion) if champion_per_image else None
        except ChampionUnloadable as e:
            reason = str(e)
    diff = se = margin = None
    replicate = False
    if old is not None:
        diff, se, margin = compare(
            candidate["value"], old, candidate.get("per_image"), theirs, candidate.get("margin", 0.0)
        )
        replicate = candidate.get("training") is not None and candidate.get("training") == champion.get("training")
    promoted = reason is None and (old is None or (not replicate and diff < -margin))
    decision = Decision(
        promoted=promoted,
        reason=reason,
        metric=METRIC,
        challenger=candidate["value"],
        champion=old,
        rescored=rescored,
        champion_recorded=champion["value"] if champion else None,
        champion_run=champion["run_name"] if champion else None,
        champion_version=champion["version"] if champion else None,
        evaluation=candidate["evaluation"],
        model=name,
        difference_nats=diff,
        difference_se=se,
        margin_nats=margin,
        paired=se is not None,
        replicate=replicate,
    )
    if not commit:
        return decision
    decided = _now()
    if promoted:
        decision.version = store.register(
            name,
            run_id,
            {
                "digitgen.run_name": candidate["run_name"],
                "digitgen.value": repr(candidate["value"]),
                "digitgen.metric": METRIC,
                "digitgen.evaluation": json.dumps(candidate["evaluation"], sort_keys=True),
                "digitgen.run_dir": candidate.get("run_dir"),
                "digitgen.data_version": candidate.get("data_version"),
                "digitgen.training": json.dumps(candidate["training"], sort_keys=True)
                if candidate.get("training")
                else None,
                "digitgen.promoted_at": decided,
            },
        )
    store.set_tags(
        run_id,
        {
            "digitgen.registry.gate.decision": "promoted" if promoted else "rejected",
            "digitgen.registry.gate.model": name,
            "digitgen.registry.gate.value": repr(candidate["value"]),
            "digitgen.registry.gate.decided_at": decided,
            "digitgen.registry.gate.version": decision.version,
            "digitgen.registry.gate.champion_run": decision.champion_run,
            "digitgen.registry.gate.champion_version": decision.champion_version,
            "digitgen.registry.gate.champion_run_id": champion["run_id"] if champion else None,
            "digitgen.registry.gate.champion_value": repr(old) if old is not None else None,
            "digitgen.registry.gate.margin_nats": repr(margin) if margin is not None else None,
            "digitgen.registry.gate.difference_nats": repr(diff) if diff is not None else None,
            "digitgen.registry.gate.difference_se": repr(se) if se is not None else None,
            "digitgen.registry.gate.replicate": "true" if replicate else None,
            "digitgen.registry.gate.reason": reason,
        },
    )
    return decision


def import_json_record(store: Store, dataset: str, name: str, path: Path) -> None:
    """A champion record of the JSON days (<out>/champion*.json, and its decisions log beside it), imported once, on
    first use: a run holding the champion's files and the decisions, registered as a version under the alias. The
    JSON files stay where they are; the registered model's tag `digitgen.imported_from` says they were imported.
    A damaged record fails here, before any training, naming the file."""
    from digitgen.registry.records import decisions_path, read_champion, read_decisions

    if not Path(path).is_file() or store._registered_tag(name, "digitgen.imported_from") or store.champion(name):
        return
    record = read_champion(path)  # ChampionRecordError names a damaged file
    if record is None:
        return
    history = read_decisions(path)  # ChampionRecordError names a log that does not parse: nothing imported
    run_dir = Path(record["run_dir"])
    run_id = store.start_run(
        dataset,
        f"imported-{record['run_name']}",
        {},
        {
            "digitgen.imported_from": str(path),
            "digitgen.run_dir": str(run_dir),
            "digitgen.data_version": record.get("data_version"),
        },
    )
    store.log_metrics(run_id, {f"vae.{METRIC}": record["value"]})
    store.log_files(run_id, [run_dir / f for f in MODEL_FILES if (run_dir / f).is_file()], "model")
    with tempfile.TemporaryDirectory() as tmp:
        decisions = Path(tmp) / "decisions.json"
        decisions.write_text(json.dumps(history, indent=1))
        store.log_files(run_id, [decisions, *([path] if path.is_file() else [])])
        if decisions_path(path).is_file():
            store.log_files(run_id, [decisions_path(path)])
    store.finish(run_id)
    store.register(
        name,
        run_id,
        {
            "digitgen.run_name": record["run_name"],
            "digitgen.value": repr(float(record["value"])),
            "digitgen.metric": METRIC,
            "digitgen.evaluation": json.dumps(record["evaluation"], sort_keys=True),
            "digitgen.run_dir": str(run_dir),
            "digitgen.data_version": record.get("data_version"),
            "digitgen.promoted_at": record.get("promoted_at"),
            "digitgen.imported_from": str(path),
        },
    )
    with writing(store.uri):
        store.client.set_registered_model_tag(name, "digitgen.imported_from", str(path))
        store.client.set_registered_model_tag(name, "digitgen.imported_decisions_run", run_id)


def champion_files(out: Path, tracking_uri: str | None, dataset: str, dst: Path) -> tuple[Path, dict]:
    """Download the files of `models:/digitgen-<dataset>@champion` (else of its binarized twin) into `dst`; returns
    the folder (vae.pt, ae.pt, samplers.pt, config.json: what a run folder holds) and the champion."""
    from digitgen.data.datasets import get_dataset

    spec = get_dataset(dataset)
    uri = store_uri(out, tracking_uri)
    records = [json_record_path(out, spec.champion_stem, b) for b in ("none", "dynamic")]
    local_and_empty = not is_remote(uri) and not Path(uri.removeprefix("sqlite:///")).exists()
    if not (local_and_empty and not any(r.is_file() for r in records)):
        store = Store.open(out, tracking_uri)
        for binarize, record in zip(("none", "dynamic"), records):
            name = model_name(dataset, binarize)
            with gate_lock(out):
                import_json_record(store, dataset, name, record)
            champion = store.champion(name)
            if champion is not None:
                try:
                    return store.download_version(name, champion["version"], Path(dst)), champion
                except Exception as e:  # MlflowException, OSError
                    raise TrackingError(
                        f"the champion {name} version {champion['version']} cannot be downloaded "
                        f"({_short(e)}). {retire_hint(name)}"
                    ) from None
    raise TrackingError(
        f"no {spec.title} champion yet in {uri} (no alias `{ALIAS}` on {model_name(dataset)}): run "
        "the pipeline first (`digitgen run`), point --runs at the output folder whose mlflow.db holds "
        "it, or set MLFLOW_TRACKING_URI; or give a run folder"
    )
