"""Serve the deployments of prefect.yaml from this process: schedules, triggers and concurrency limits, no worker.

prefect.yaml is read here and built with Prefect's public pieces (`prefect.schedules.Schedule`, the deployment trigger
types of `prefect.events`, `ConcurrencyLimitConfig`, `Flow.to_deployment`): Prefect has no public loader for the file
(`prefect deploy` reads it with private modules of its CLI). What serves here is what `make deploy` registers;
`tests/test_server.py` checks both on a live server. A key that serving cannot honour is refused by name rather than
dropped.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from digitgen.errors import DigitgenError

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"

# The deployment keys `digitgen serve` passes on to Prefect. `work_pool` is accepted and unused: served runs execute
# in the serving process (with its environment, so `job_variables` is accepted and unused too). Anything else is
# refused here by name.
SERVED = {
    "name",
    "description",
    "entrypoint",
    "parameters",
    "schedules",
    "triggers",
    "concurrency_limit",
    "paused",
    "version",
    "tags",
    "enforce_parameter_schema",
    "work_pool",
    "job_variables",
}


class ServeError(DigitgenError, ValueError):
    """prefect.yaml holds something `digitgen serve` cannot serve faithfully."""


def load_deployment_specs(path: Path = PREFECT_YAML) -> list[dict]:
    """The `deployments:` entries of prefect.yaml (YAML anchors resolved); refuses, naming the deployment and the
    key, anything `digitgen serve` would not honour."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ServeError(f"{path} is not valid YAML: {e}") from None
    entries = raw.get("deployments") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
        raise ServeError(f"{path} is not a valid prefect.yaml: it needs a `deployments:` list of mappings")
    for entry in entries:
        name = entry.get("name")
        if not isinstance(name, str) or not isinstance(entry.get("entrypoint"), str):
            raise ServeError(f"{path}: deployment {name!r} needs a `name` and an `entrypoint` (path.py:flow)")
        unknown = sorted(set(entry) - SERVED)
        if unknown:
            raise ServeError(
                f"{path}: deployment {name!r} has {', '.join(unknown)}, which `digitgen serve` cannot "
                f"honour (it serves {', '.join(sorted(SERVED))}); use `make deploy` and a worker for it"
            )
    return entries


def _schedule(spec) -> object:
    """A prefect.yaml schedule entry as Prefect's public `Schedule` (exactly one of cron, interval, rrule)."""
    from prefect.schedules import Schedule

    fields = {f.name for f in dataclasses.fields(Schedule)}
    if not isinstance(spec, dict) or sum(k in spec for k in ("cron", "interval", "rrule")) != 1:
        raise ValueError(f"schedules: {spec!r} needs exactly one of cron, interval or rrule")
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"schedules: {', '.join(unknown)} is not a schedule setting ({', '.join(sorted(fields))})")
    spec = dict(spec)
    if isinstance(spec.get("interval"), int | float):
        spec["interval"] = timedelta(seconds=spec["interval"])
    if isinstance(spec.get("anchor_date"), str):
        spec["anchor_date"] = datetime.fromisoformat(spec["anchor_date"])
    return Schedule(**spec)


def _triggers(name: str, specs: list) -> list:
    """prefect.yaml triggers as Prefect's deployment trigger types, named `<deployment>__automation_<i>` unless
    named, as `prefect deploy` names them."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter = TypeAdapter(DeploymentTriggerTypes)
    return [adapter.validate_python({"name": f"{name}__automation_{i}", **t}) for i, t in enumerate(specs, start=1)]


def check_parameters(specs: list[dict]) -> None:
    """Refuse deployment parameters that the pipeline's config would refuse, naming the deployment."""
    from pydantic import ValidationError

    from digitgen.config import PipelineConfig

    for spec in specs:
        if spec["entrypoint"].endswith(":digit_pipeline"):
            try:
                PipelineConfig(**spec.get("parameters") or {})
            except ValidationError as e:
                raise ServeError(f"prefect.yaml deployment {spec['name']!r} has invalid parameters:\n{e}") from None


def build_deployments(specs: list[dict], only: list[str] | None = None) -> list:
    """RunnerDeployments for `prefect.serve`, built from the specs with Prefect's public schedule and trigger types.
    Every spec's schedules, triggers and limit are checked before any flow is loaded (torch and the rest: seconds), so
    a refusal is answered at once."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint

    checked = []
    for spec in specs:
        if only and spec["name"] not in only:
            continue
        try:
            schedules = [_schedule(s) for s in spec.get("schedules") or []]
            triggers = _triggers(spec["name"], [dict(t) for t in spec.get("triggers") or []])
            limit = spec.get("concurrency_limit")
            if isinstance(limit, dict):
                limit = ConcurrencyLimitConfig(**{k: v for k, v in limit.items() if v is not None})
        except (TypeError, ValueError) as e:  # pydantic's ValidationError included
            raise ServeError(f"prefect.yaml deployment {spec['name']!r}: {e}") from None
        checked.append((spec, schedules, triggers, limit))
    return [
        load_flow_from_entrypoint(str(ROOT / spec["entrypoint"])).to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            parameters=spec.get("parameters") or {},
            schedules=schedules,
            triggers=triggers,
            concurrency_limit=limit,
            paused=spec.get("paused"),
            version=spec.get("version"),
            tags=spec.get("tags"),
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
        )
        for spec, schedules, triggers, limit in checked
    ]


def serve(only: list[str] | None = None, path: Path = PREFECT_YAML) -> None:
    """Serve the deployments (all, or those named) until interrupted."""
    from prefect import serve as prefect_serve

    from digitgen.server_setup import apply_server_objects, require_reachable_server

    try:
        specs = load_deployment_specs(path)
        unknown = set(only or []) - {s["name"] for s in specs}
        if unknown:
            raise ServeError(
                f"no deployment named {', '.join(sorted(unknown))} in {path}; "
                f"there are {', '.join(s['name'] for s in specs)}"
            )
        check_parameters(specs)
        deployments = build_deployments(specs, only)
    except ServeError as e:
        raise SystemExit(f"digitgen serve: {e}") from None
    # Served runs are child processes of this one: what they write goes where these absolute paths say, never
    # against a working folder.
    for name, default in (("DIGITGEN_DATA_ROOT", "data"), ("DIGITGEN_OUT", "artifacts")):
        os.environ[name] = str(Path(os.environ.get(name) or default).resolve())
    require_reachable_server()
    apply_server_objects()
    prefect_serve(*deployments)
