"""Serve the deployments of prefect.yaml from this process: schedules and triggers, no worker needed."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_deployment_specs(path: Path = ROOT / "prefect.yaml") -> list[dict]:
    """The `deployments:` entries of prefect.yaml, with YAML anchors resolved."""
    return yaml.safe_load(path.read_text())["deployments"]


def check_parameters(specs: list[dict]) -> None:
    """Refuse deployment parameters that the pipeline's config would refuse, naming the deployment."""
    from pydantic import ValidationError

    from digitgen.config import PipelineConfig

    for spec in specs:
        if spec["entrypoint"].endswith(":digit_pipeline"):
            try:
                PipelineConfig(**spec.get("parameters") or {})
            except ValidationError as e:
                raise ValueError(f"prefect.yaml deployment {spec['name']!r} has invalid parameters:\n{e}") from None


def build_deployments(specs: list[dict], only: list[str] | None = None) -> list:
    """RunnerDeployments for `prefect.serve`, from the same specs `prefect deploy` reads."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    deployments = []
    for spec in specs:
        if only and spec["name"] not in only:
            continue
        flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
            for s in spec.get("schedules") or []
        ]
        triggers = [
            DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"}) for t in spec.get("triggers") or []
        ]
        deployments.append(
            flow.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                parameters=spec.get("parameters") or {},
                schedules=schedules,
                triggers=triggers,
                tags=spec.get("tags"),
            )
        )
    return deployments


def serve(only: list[str] | None = None) -> None:
    """Serve the deployments (all, or those named) until interrupted."""
    from prefect import serve as prefect_serve

    from digitgen.cli import require_reachable_server

    specs = load_deployment_specs()
    unknown = set(only or []) - {s["name"] for s in specs}
    if unknown:
        raise SystemExit(f"digitgen serve: no deployment named {', '.join(sorted(unknown))} in prefect.yaml; "
                         f"there are {', '.join(s['name'] for s in specs)}")  # fmt: skip
    check_parameters(specs)
    require_reachable_server()
    prefect_serve(*build_deployments(specs, only))
