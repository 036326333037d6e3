"""The sweep on a local Dask cluster of 2 workers, on tiny data."""

import json
from pathlib import Path

from flows.sweep import run_sweep


def test_sweep_on_a_local_dask_cluster(prefect_harness, tmp_path, data_root):
    summary = run_sweep(
        n_workers=2,
        betas=[0.5, 2.0],
        latent_dims=[2, 4],
        epochs=1,
        train_limit=1000,
        test_limit=500,
        is_samples=5,
        data_root=data_root,
        out=tmp_path,
        run_name="grid",
        device="cpu",
    )
    assert len(summary["results"]) == 4
    assert {(r["beta"], r["latent_dim"]) for r in summary["results"]} == {(0.5, 2), (0.5, 4), (2.0, 2), (2.0, 4)}
    best = summary["best"]
    assert best["test_nll_is_nats"] == min(r["test_nll_is_nats"] for r in summary["results"])
    folder = tmp_path / "sweep-grid"
    assert (folder / "sweep_nll.png").stat().st_size > 0
    assert json.loads((folder / "sweep.json").read_text())["best"]["beta"] == best["beta"]
    for r in summary["results"]:
        assert (Path(r["run_dir"]) / "vae.pt").is_file()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sweep-report"])))
    assert found and "Best: beta" in found[0].data and "data:image/png;base64," in found[0].data

    from digitgen.registry.tracking import Store, store_uri

    store = Store(store_uri(tmp_path, None), tmp_path)  # the sweep in MLflow: a parent run, a child per grid point
    runs = store.client.search_runs([store.experiment("mnist")])
    parent = next(r for r in runs if r.info.run_name == "sweep-grid")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in [parent, *children])
    assert {(float(r.data.params["beta"]), int(r.data.params["latent_dim"])) for r in children} == {
        (0.5, 2),
        (0.5, 4),
        (2.0, 2),
        (2.0, 4),
    }
    assert all("vae.test_nll_is_nats" in r.data.metrics for r in children)
    assert parent.data.metrics["best.test_nll_is_nats"] == best["test_nll_is_nats"]
