"""`digitgen run [--epochs ...]`: validate the settings, run the flow, print the run folder last."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import difflib
import os
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from digitgen.config import INGEST_SETTINGS, SWEEP_GRID, SWEEP_SETTINGS, PipelineConfig
from digitgen.data.datasets import DATASETS
from digitgen.errors import DigitgenError
from digitgen.preflight import project_defaults, require_data, require_tracking, require_version
from digitgen.server_setup import apply_alerts, apply_server_objects, require_reachable_server
from models.samplers import SAMPLERS


def _add_config_options(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One --option per config field (or per field in `names`), typed and documented from the field itself."""
    for name, field in PipelineConfig.model_fields.items():
        if names is not None and name not in names:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True) if name != "run_name" else "a timestamp"
        help_ = field.description if "default" in field.description else f"{field.description} (default: {default})"
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if ann is bool:  # --name / --no-name
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif typing.get_origin(ann) is typing.Literal:
            choices = typing.get_args(ann)  # strings, or ints such as --pixel-kernel's: parse as their type
            parser.add_argument(flag, dest=name, choices=choices, type=type(choices[0]), default=None, help=help_)
        elif typing.get_origin(ann) is list:
            parser.add_argument(flag, dest=name, type=int, nargs="+", default=None, metavar="N", help=help_)
        else:
            base = args[0] if args else ann
            conv = {int: int, float: float, Path: Path}.get(base, str)
            parser.add_argument(flag, dest=name, type=conv, default=None, metavar=name.upper(), help=help_)


class Parser(argparse.ArgumentParser):
    """No abbreviations (`--epoch` is not `--epochs`); an unknown option is answered with the closest known one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self._subparsers._group_actions[0].choices.get(getattr(ns, "command", None))
            (command or self).unknown(extra)
        return ns

    def unknown(self, extra: list[str]) -> None:
        known = [s for a in self._actions for s in a.option_strings]
        hints = []
        for arg in extra:
            close = difflib.get_close_matches(arg.split("=")[0], known, n=1, cutoff=0.6) if arg.startswith("-") else []
            hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        self.error("unrecognized arguments: " + ", ".join(hints))


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="digitgen", description="Digit generation with a VAE and an AE, as a Prefect pipeline.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser(
        "run", help="run the whole pipeline once", description="Run the pipeline once; prints the run folder last."
    )
    _add_config_options(run)
    sw = sub.add_parser("sweep", help="train VAEs over a beta x latent-dim grid in parallel on a Dask cluster")
    grid = {k: " ".join(f"{v:g}" for v in vs) for k, vs in SWEEP_GRID.items()}
    sw.add_argument(
        "--betas", type=float, nargs="+", default=SWEEP_GRID["betas"], help=f"KL weights (default: {grid['betas']})"
    )
    sw.add_argument(
        "--latent-dims",
        type=int,
        nargs="+",
        default=SWEEP_GRID["latent_dims"],
        help=f"latent sizes (default: {grid['latent_dims']})",
    )
    sw.add_argument("--dask-address", help="scheduler of an existing Dask cluster (default: start a local one)")
    sw.add_argument("--n-workers", type=int, default=2, help="worker processes of the local cluster (default: 2)")
    _add_config_options(sw, SWEEP_SETTINGS)
    ing = sub.add_parser(
        "ingest",
        help="check a folder of labelled PNGs and add it to the dataset as a new version (or quarantine it)",
        description="Check BATCH_FOLDER (<class index>/<name>.png, 8-bit greyscale) with Great Expectations; "
        "accepted: a new data version whose id is printed last; refused: quarantined, exit code 1.",
    )
    ing.add_argument("batch", metavar="BATCH_FOLDER", type=Path, help="the batch: <class index>/<any name>.png")
    _add_config_options(ing, INGEST_SETTINGS)
    gen = sub.add_parser(
        "generate",
        help="draw new images from a trained run (or the champion) into a .png grid or a .npy array",
        description="Decode new images with a run's model; prints the written file last.",
    )
    gen.add_argument("source", metavar="SOURCE", help="a run folder, or `champion`: the current champion of --dataset")
    gen.add_argument("--n", type=int, default=64, help="how many images (default: 64)")
    gen.add_argument(
        "--digit",
        type=int,
        default=None,
        metavar="D",
        help="every image is meant to be of class D (default: classes as in the training data)",
    )
    gen.add_argument(
        "--sampler",
        default="gmm",
        metavar="NAME",
        help="where codes come from: " + "; ".join(f"{k}: {v}" for k, v in SAMPLERS.items()) + " (default: gmm)",
    )
    gen.add_argument("--seed", type=int, default=0, help="same seed, same images (default: 0)")
    gen.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="FILE.png: a grid, each image labelled with its class; FILE.npy: float32 [N, 28, 28] in [0, 1]",
    )
    gen.add_argument("--model", choices=["vae", "ae"], default="vae", help="whose decoder (default: vae)")
    gen.add_argument("--dataset", choices=list(DATASETS), default="mnist", help="whose champion (default: mnist)")
    gen.add_argument(
        "--runs",
        type=Path,
        default=None,
        metavar="DIR",
        help="the output folder whose MLflow store (DIR/mlflow.db) holds the champion, unless "
        "MLFLOW_TRACKING_URI names a server (env DIGITGEN_OUT, default: artifacts)",
    )
    prom = sub.add_parser(
        "promote",
        help="log a complete run to MLflow and take the model gate's decision again (after a gate that "
        "failed, e.g. with the tracking server down)",
        description="Log RUN (a complete run folder) to its MLflow run and decide: register it as the new version "
        "of the champion, or record the rejection. Prints the decision.",
    )
    prom.add_argument("run", metavar="RUN", type=Path, help="a run folder holding report.md and metrics.json")
    _add_config_options(prom, ("tracking_uri",))
    ret = sub.add_parser(
        "retire",
        help="remove the alias `champion` from a dataset's registered model (its version stays)",
        description="Retire the champion (e.g. one whose files no longer load): the next run that passes the gate "
        "becomes champion.",
    )
    ret.add_argument("--dataset", choices=list(DATASETS), default="mnist", help="whose champion (default: mnist)")
    ret.add_argument("--binarized", action="store_true", help="the champion of binarized runs")
    _add_config_options(ret, ("out", "tracking_uri"))
    gen.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto")
    alerts = sub.add_parser(
        "alerts",
        help="apply the alert automations (failed runs, rejected models) to the Prefect server",
        description="Post to the webhook in DIGITGEN_ALERT_WEBHOOK when a pipeline run fails or crashes, or the gate "
        "rejects a model: saves the notification block and creates or updates the automations.",
    )
    alerts.add_argument("--optional", action="store_true", help="without DIGITGEN_ALERT_WEBHOOK, say so and succeed")
    sub.add_parser(
        "apply",
        help="create on the Prefect server what the deployments rely on: the global concurrency limits, the "
        "crash re-run automation, and the alerts when DIGITGEN_ALERT_WEBHOOK is set (make deploy runs it)",
    )
    ver = sub.add_parser("versions", help="list a dataset's versions: id, date, training images, batches")
    _add_config_options(ver, ("dataset", "data_root"))
    serve = sub.add_parser(
        "serve", help="serve the deployments of prefect.yaml (schedules, triggers) from this process"
    )
    serve.add_argument("--only", nargs="+", metavar="NAME", help="serve only these deployments (default: all)")
    serve.add_argument(
        "--prefect-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the prefect.yaml to serve (default: the project's)",
    )
    return p


def config_from_args(ns: argparse.Namespace) -> PipelineConfig:
    """Build the config from the options given; exit 2 naming the setting if a value is refused."""
    given = {k: v for k, v in vars(ns).items() if k in PipelineConfig.model_fields and v is not None}
    try:
        if given.get("resume"):
            resume = given.pop("resume")
            config = PipelineConfig.for_resume(resume, **given)
        else:
            config = PipelineConfig(**given)
        if config.device == "cuda":  # refuse --device cuda without a GPU now, not after the data stages
            from models.train import pick_device  # torch: imported only here, so refusals answer at once

            pick_device(config.device)
        return config
    except RuntimeError as e:
        sys.exit(f"digitgen: invalid settings, nothing was run:\n  --device: {e}")
    except ValueError as e:
        if not isinstance(e, ValidationError):
            sys.exit(f"digitgen: invalid settings, nothing was run:\n  {e}")
        lines = []
        for err in e.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            flag = "--" + name.replace("_", "-") if name in PipelineConfig.model_fields else name
            env = {"data_source": "DIGITGEN_DATA_SOURCE", "data_root": "DIGITGEN_DATA_ROOT", "out": "DIGITGEN_OUT"}
            if name in env and name not in given:  # the value came from the environment, not a flag
                flag = env[name]
            lines.append(f"  {flag}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
        sys.exit("digitgen: invalid settings, nothing was run:\n" + "\n".join(lines))


def _import_pipeline() -> None:
    import flows.pipeline  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    project_defaults()
    ns = parser().parse_args(argv)
    if ns.command == "serve":
        from digitgen.serve import PREFECT_YAML, serve

        return serve(ns.only, ns.prefect_file or PREFECT_YAML)
    if ns.command == "sweep":
        from flows.sweep import run_sweep

        params = {k: v for k, v in vars(ns).items() if k in PipelineConfig.model_fields and v is not None}
        params.pop("dask_address", None)  # passed on its own, to the task runner
        for beta in ns.betas:  # refuse bad settings before starting a cluster
            for latent_dim in ns.latent_dims:
                config_from_args(argparse.Namespace(**params, beta=beta, latent_dim=latent_dim))
        require_reachable_server()
        require_tracking(config_from_args(argparse.Namespace(**params)))
        from digitgen.server import Interrupted, interruptible, prefect_api

        try:  # the Dask workers report to this run's server: the configured one, or ours, bound where they reach it
            with prefect_api(reach=ns.dask_address), interruptible():
                summary = run_sweep(ns.dask_address, ns.n_workers, betas=ns.betas, latent_dims=ns.latent_dims, **params)
        except Interrupted as stop:
            print("digitgen: sweep interrupted", file=sys.stderr, flush=True)
            sys.exit(stop.code)
        except DigitgenError as e:
            sys.exit(f"digitgen: the sweep failed: {e}")
        print(Path(summary["best"]["run_dir"]).parent.resolve(), flush=True)
        return None
    if ns.command == "versions":
        from digitgen.data_commands import list_versions

        return list_versions(config_from_args(ns))
    if ns.command in ("generate", "promote", "retire"):  # models and the registry: no Prefect server
        from digitgen import model_commands

        return getattr(model_commands, ns.command)(ns)
    if ns.command == "alerts":
        return apply_alerts(required=not ns.optional)
    if ns.command == "apply":
        return apply_server_objects()
    if ns.command == "ingest":
        from digitgen.data_commands import ingest

        return ingest(ns, config_from_args(ns))
    config = config_from_args(ns)
    try:
        config.check_writable()
    except PermissionError as e:
        sys.exit(f"digitgen: invalid settings, nothing was run:\n  {e}")
    require_reachable_server()
    require_tracking(config)
    require_data(config)
    require_version(config)
    from digitgen.server import Interrupted, interruptible, last_epoch, prefect_api

    try:
        # The flow (torch, MLflow, Great Expectations: seconds) is imported late, once the settings are checked, and
        # while a temporary server boots. At a terminal a failure is reported at once (--resume continues it);
        # deployed runs retry on their own.
        with interruptible(), prefect_api(reach=config.dask_address, meanwhile=_import_pipeline):
            from flows.pipeline import digit_pipeline

            run_dir = digit_pipeline.with_options(retries=0)(**config.model_dump(exclude_unset=False))
    except Interrupted as stop:
        folder = config.run_dir.resolve()
        if (folder / "config.json").is_file():
            print(
                f"digitgen: interrupted after epoch {last_epoch(folder)}; resume with: digitgen run --resume {folder}",
                file=sys.stderr,
                flush=True,
            )
        else:
            print("digitgen: interrupted before the run began; nothing was written", file=sys.stderr, flush=True)
        sys.exit(stop.code)
    except DigitgenError as e:  # written for the user: what was wrong and what to do
        sys.exit(f"digitgen: the run failed: {e}")
    except Exception as e:  # unexpected: the flow logged the traceback; name the error, once
        sys.exit(f"digitgen: the run failed: {type(e).__name__}: {e}")
    print(Path(run_dir).resolve(), flush=True)


def entry() -> None:
    """The `digitgen` command: `main`, then an exit that skips the interpreter's teardown.

    The CUDA build of torch touches about 100 MB more as its libraries' destructors run at a process's end (cuBLAS,
    cuSOLVER, libtorch_cuda), after the work is done: a peak that a container's memory limit counts (an ingest of
    20,000 images peaked there). Exit handlers still run first (Prefect's, logging's, MLflow's: registered after this
    one, they run before it) and the streams are flushed; the exit code is the command's."""
    ended: list[int] = []
    atexit.register(_exit_now, ended)
    try:
        main()
    except SystemExit as e:  # sys.exit("message"): Python prints it before the exit handlers run
        ended.append(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
        raise
    ended.append(0)


def _exit_now(ended: list[int]) -> None:
    if ended:  # not after an uncaught exception or KeyboardInterrupt: the interpreter's own exit reports those
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(ended[0])


if __name__ == "__main__":
    entry()
