"""The nightly pipeline: data -> validate -> train VAE and AE -> evaluate -> samples -> latent maps -> report."""

from __future__ import annotations

from prefect import flow

from digitgen.config import PipelineConfig
from digitgen.flow_params import settings_flow
from tasks.classifier import train_judge
from tasks.evaluate import evaluate
from tasks.ingest import download_data, resolve_version
from tasks.latent import render_latent_space
from tasks.promote import gate, promote
from tasks.report import write_report
from tasks.results import Trained
from tasks.run import compute_slot, run_config, start_run
from tasks.sample import generate_samples
from tasks.samplers import fit_samplers
from tasks.scale import dask_runner
from tasks.track import mark_failed
from tasks.train import train_ae, train_vae
from tasks.validate import show_validation, validate_data


@flow(name="train-in-parallel")
def train_in_parallel(config: PipelineConfig, run_dir: str) -> tuple[Trained, Trained]:
    """Train the VAE and the AE at the same time on the flow's task runner (a Dask cluster)."""
    vae, ae = train_vae.submit(config, run_dir), train_ae.submit(config, run_dir)
    return vae.result(), ae.result()


# A failed run is retried once in its own folder, from its last complete epoch (a crashed one is re-run by the
# automation in digitgen/alerts.py).
# A run that fails for good has its MLflow run marked FAILED (a resumed run reopens it).
@flow(
    name="digit-pipeline",
    log_prints=True,
    retries=1,
    retry_delay_seconds=10,
    on_failure=[mark_failed],
    on_crashed=[mark_failed],
)
@settings_flow()
def digit_pipeline(**settings) -> str:
    """Train and compare a VAE and an AE on a dataset version; returns the run folder. Unset settings (None) take
    the preset's or the config's defaults; an unset run_name is the flow run's name."""
    config = run_config(settings)  # a resumed run's own settings; a retried flow run's own folder
    data = download_data(config.dataset, config.data_root, config.data_source)
    version = resolve_version(config.dataset, config.data_root, config.data_version)
    config = config.model_copy(update={"data_version": version["id"]})  # the run records the version it trained on
    run_dir = start_run(config)
    checked = validate_data(config.dataset, data["data_root"], data["fingerprint"], return_state=True)
    show_validation(checked.result(), cached=checked.name == "Cached")  # result() raises if validation failed
    with compute_slot():  # one run computes at a time on a server: the global limit digitgen-training
        if config.task_runner == "dask":
            vae, ae = train_in_parallel.with_options(task_runner=dask_runner(config.dask_address))(config, run_dir)
        else:
            vae = train_vae(config, run_dir)
            ae = train_ae(config, run_dir)
        samplers = fit_samplers(config, run_dir, vae.checkpoint, ae.checkpoint)
        judge = train_judge(config, data["fingerprint"])
        metrics = evaluate(config, run_dir, vae, ae, judge, samplers)
        decision = gate(config, run_dir, metrics)  # decided now, written last: a failed run never becomes champion
        samples = generate_samples(config, run_dir, vae.checkpoint, ae.checkpoint, samplers)
        latent = render_latent_space(config, run_dir, vae.checkpoint, ae.checkpoint)
    write_report(config, run_dir, metrics, decision, {**samples, **latent["files"]}, version)
    promote(config, run_dir, metrics, decision)
    return run_dir
