"""Serve the deployments of prefect.yaml from this process: schedules, triggers and concurrency limits, no worker.

prefect.yaml is read by Prefect's own code, as `prefect deploy` reads it (its schema, its schedule and trigger
builders), so what serves here is what `make deploy` registers. A key that serving cannot honour is refused by name
rather than dropped.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from models.errors import DigitgenError

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"

# The deployment keys `digitgen serve` passes on to Prefect. `work_pool` is accepted and unused: served runs execute
# in the serving process. Prefect's schema ignores keys it does not know, so anything else is refused here by name.
SERVED = {"name", "description", "entrypoint", "parameters", "schedules", "triggers", "concurrency_limit", "paused",
          "version", "tags", "enforce_parameter_schema", "work_pool"}  # fmt: skip


class ServeError(DigitgenError, ValueError):
    """prefect.yaml holds something `digitgen serve` cannot serve faithfully."""


def load_deployment_specs(path: Path = PREFECT_YAML) -> list[dict]:
    """The `deployments:` entries of prefect.yaml, validated by Prefect's own prefect.yaml schema (YAML anchors
    resolved); refuses, naming the deployment and the key, anything `digitgen serve` would not honour."""
    from prefect.cli.deploy._config import _format_validation_error
    from prefect.cli.deploy._models import PrefectYamlModel
    from pydantic import ValidationError

    raw = yaml.safe_load(Path(path).read_text())
    try:
        model = PrefectYamlModel.model_validate(raw)
    except ValidationError as e:
        raise ServeError(f"{path} is not a valid prefect.yaml. {_format_validation_error(e, raw)}") from None
    for entry in raw.get("deployments") or []:
        unknown = sorted(set(entry) - SERVED)
        if unknown:
            raise ServeError(
                f"{path}: deployment {entry.get('name')!r} has {', '.join(unknown)}, which `digitgen serve` cannot "
                f"honour (it serves {', '.join(sorted(SERVED))}); use `make deploy` and a worker for it"
            )
    return [d.model_dump(exclude_unset=True, mode="json") for d in model.deployments]


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
    """RunnerDeployments for `prefect.serve`, built with Prefect's own schedule and trigger builders."""
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint

    deployments = []
    for spec in specs:
        if only and spec["name"] not in only:
            continue
        flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
        try:
            schedules = [
                DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(s))
                for s in spec.get("schedules") or []
            ]
            triggers = _initialize_deployment_triggers(spec["name"], [dict(t) for t in spec.get("triggers") or []])
        except ValueError as e:  # pydantic's ValidationError included
            raise ServeError(f"prefect.yaml deployment {spec['name']!r}: {e}") from None
        limit = spec.get("concurrency_limit")
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(**{k: v for k, v in limit.items() if v is not None})
        deployments.append(
            flow.to_deployment(
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
        )
    return deployments


def serve(only: list[str] | None = None, path: Path = PREFECT_YAML) -> None:
    """Serve the deployments (all, or those named) until interrupted."""
    from prefect import serve as prefect_serve

    from digitgen.cli import apply_alerts, require_reachable_server

    try:
        specs = load_deployment_specs(path)
        unknown = set(only or []) - {s["name"] for s in specs}
        if unknown:
            raise ServeError(f"no deployment named {', '.join(sorted(unknown))} in {path}; "
                             f"there are {', '.join(s['name'] for s in specs)}")  # fmt: skip
        check_parameters(specs)
        deployments = build_deployments(specs, only)
    except ServeError as e:
        raise SystemExit(f"digitgen serve: {e}") from None
    require_reachable_server()
    apply_alerts(required=False)
    prefect_serve(*deployments)
