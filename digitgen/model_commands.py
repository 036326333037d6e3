"""The commands on models and the registry, none of which needs a Prefect server: `digitgen generate`, `digitgen
promote RUN` (the end of a run whose model gate failed) and `digitgen retire` (the champion retired on purpose)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from digitgen.config import PipelineConfig, default_out
from digitgen.errors import DigitgenError


def generate(ns: argparse.Namespace) -> None:
    """Decode new images with a run's model, or the registry's champion (no Prefect needed); print the file last."""
    import tempfile

    from digitgen.server import Interrupted, interruptible
    from models.generate import check_request, generate_file, resolve_source

    runs, champion = ns.runs or default_out(), None
    try:  # SIGINT and SIGTERM handled here, as `digitgen run` does: also when the shell started us ignoring SIGINT
        with interruptible(), tempfile.TemporaryDirectory() as tmp:
            if ns.source == "champion":
                from digitgen.registry.gate import champion_files

                run, champion = champion_files(
                    runs, os.environ.get("MLFLOW_TRACKING_URI") or None, ns.dataset, Path(tmp)
                )
                name = champion["run_name"]
            else:
                run, name = resolve_source(ns.source), None
            check_request(run, ns.n, ns.digit, ns.sampler, ns.out)  # before torch is imported: answered at once
            from models.train import pick_device

            path, _ = generate_file(
                run, ns.out, ns.n, ns.digit, ns.sampler, ns.seed, ns.model, pick_device(ns.device), name=name
            )
    except Interrupted as stop:
        print(f"digitgen generate: interrupted ({stop}); nothing was written ({ns.out} is as it was)", file=sys.stderr)
        sys.exit(stop.code)
    except (DigitgenError, RuntimeError) as e:
        if champion is not None:  # its files may be what failed (torch is imported only then, not for a refusal)
            from models.checkpoint import CheckpointError

            if isinstance(e, CheckpointError):
                from digitgen.registry.tracking import retire_hint

                sys.exit(
                    f"digitgen generate: the champion, {champion['name']} version {champion['version']} (run "
                    f"{champion['run_name']}), cannot generate: {e}. {retire_hint(champion['name'])}"
                )
        sys.exit(f"digitgen generate: {e}")
    print(path.resolve(), flush=True)


def promote(ns: argparse.Namespace) -> None:
    """`digitgen promote RUN`: the end of a run whose model gate failed (tracking server down, ...): log it to its
    MLflow run and decide. Under the global limit digitgen-champion when a Prefect server is configured."""
    import json

    from tasks.promote import finish_run

    run = ns.run
    if not (run / "report.md").is_file() or not (run / "metrics.json").is_file():
        sys.exit(
            f"digitgen promote: {run} is not a complete run (no report.md or metrics.json): resume it with "
            f"`digitgen run --resume {run}`"
        )
    overrides = {"tracking_uri": ns.tracking_uri} if ns.tracking_uri else {}
    try:
        config = PipelineConfig.for_resume(run, **overrides)
        metrics = json.loads((run / "metrics.json").read_text())
        decision = finish_run(config, str(run), metrics["vae"]["test_nll_is_nats"], metrics["n_test"])
    except (DigitgenError, ValueError, KeyError, OSError) as e:
        sys.exit(f"digitgen promote: {e}")
    print(f"{run.resolve().name}: {decision.verdict(done=True)}", flush=True)


def retire(ns: argparse.Namespace) -> None:
    """`digitgen retire [--dataset D] [--binarized]`: remove the alias `champion`; say what it pointed at."""
    from digitgen.registry.tracking import Store, model_name

    name = model_name(ns.dataset, "dynamic" if ns.binarized else "none")
    try:
        store = Store.open(ns.out or default_out(), ns.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None)
        was = store.retire(name)
    except DigitgenError as e:
        sys.exit(f"digitgen retire: {e}")
    if was is None:
        sys.exit(f"digitgen retire: {name} has no champion in {store.uri}")
    print(f"{name} version {was['version']} (run {was['run_name']}) is no longer the champion", flush=True)
