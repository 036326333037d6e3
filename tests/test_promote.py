"""The model gate on MLflow's registry, against both stores a team may use: the embedded SQLite store and a
PostgreSQL-backed `mlflow server`. The champion is the alias `champion` of a registered model; a promotion registers
a version and moves the alias, a rejection registers nothing and is recorded on the run."""

import multiprocessing as mp
import uuid

import pytest

from digitgen.registry import gate, locks, run_record, tracking

EVAL = {"is_samples": 100, "n_test": 10000, "seed": 0}


@pytest.fixture(params=["sqlite", "server"])
def store(request, tmp_path):
    uri = request.getfixturevalue("mlflow_team") if request.param == "server" else None
    return tracking.Store.open(tmp_path / "out", uri)


@pytest.fixture
def name():
    """A registered model of this test's own (the server's registry is shared by the tests)."""
    return f"digitgen-test-{uuid.uuid4().hex[:8]}"


def _candidate(run, value, evaluation=EVAL):
    return {"run_dir": f"/runs/{run}", "run_name": run, "value": value, "evaluation": evaluation}


def _never(champion):
    raise AssertionError("same evaluation settings: the champion must not be re-scored")


def _challenge(store, name, run, value, score=_never, evaluation=EVAL, commit=True, run_id=None):
    run_id = run_id or store.start_run("mnist", run, {"value": value}, {})
    return gate.decide(store, name, run_id, _candidate(run, value, evaluation), score, commit), run_id


def test_first_run_becomes_champion_as_version_1_under_the_alias(store, name):
    decision, run_id = _challenge(store, name, "a", 100.0)
    assert decision.promoted and decision.champion is None and decision.version == "1"
    champion = store.champion(name)
    assert champion["run_name"] == "a" and champion["run_id"] == run_id and champion["value"] == 100.0
    version = store.client.get_model_version_by_alias(name, "champion")
    assert version.run_id == run_id and version.source.endswith("/model")
    assert store.client.get_run(run_id).data.tags["digitgen.registry.gate.decision"] == "promoted"


def test_a_worse_challenger_registers_nothing_and_is_recorded_on_its_run(store, name):
    _challenge(store, name, "a", 100.0)
    worse, worse_id = _challenge(store, name, "b", 101.5)
    assert not worse.promoted and worse.champion == 100.0 and worse.challenger == 101.5
    assert [str(v.version) for v in store.client.search_model_versions(f"name = '{name}'")] == ["1"]
    tags = store.client.get_run(worse_id).data.tags
    assert tags["digitgen.registry.gate.decision"] == "rejected" and tags["digitgen.registry.gate.champion_run"] == "a"
    assert (
        tags["digitgen.registry.gate.champion_version"] == "1"
        and float(tags["digitgen.registry.gate.champion_value"]) == 100.0
    )
    better, _ = _challenge(store, name, "c", 99.0)
    assert better.promoted and better.champion_run == "a" and better.version == "2"
    assert store.champion(name)["run_name"] == "c"
    decisions = store.decisions("mnist", name)
    assert [(d["run_name"], d["promoted"], d["champion_run"]) for d in decisions] == [
        ("a", True, None),
        ("b", False, "a"),
        ("c", True, "a"),
    ]


def test_the_gate_reads_the_champion_from_the_registry(store, name):
    """What MLflow says is what the gate compares with: a champion whose recorded value is changed there (as a
    person might, from the UI) is judged by the new value."""
    _challenge(store, name, "a", 100.0)
    store.client.set_model_version_tag(name, "1", "digitgen.value", "95.0")
    decision, _ = _challenge(store, name, "b", 97.0, commit=False)
    assert decision.champion == 95.0 and not decision.promoted


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_champion_recording_a_non_finite_value_is_refused_as_damaged(tmp_path, name, value):
    """NaN would make every challenger lose, inf none: the gate refuses to decide, names the version and says how
    to retire it; nothing is registered."""
    store = tracking.Store.open(tmp_path / "out", None)
    _challenge(store, name, "a", 100.0)
    store.client.set_model_version_tag(name, "1", "digitgen.value", value)
    with pytest.raises(tracking.TrackingError, match=f"{name} version 1, the champion.*damaged.*retire"):
        _challenge(store, name, "b", 90.0)
    assert [str(v.version) for v in store.client.search_model_versions(f"name = '{name}'")] == ["1"]


def test_the_champion_is_rescored_under_the_challengers_settings(store, name):
    _challenge(store, name, "a", 90.0, evaluation={**EVAL, "is_samples": 10})
    seen = []
    decision, _ = _challenge(store, name, "b", 95.0, score=lambda c: seen.append(c["version"]) or 96.0)
    assert seen == ["1"] and decision.promoted and decision.champion == 96.0
    from digitgen.figures.report import gate_line

    line = gate_line(decision)  # the report says which number is which
    assert "96.00 nats/image, re-scored under this run's evaluation settings; its record says 90.00" in line, line


def test_deciding_without_committing_registers_and_tags_nothing(store, name):
    _challenge(store, name, "a", 100.0)
    decision, run_id = _challenge(store, name, "b", 90.0, commit=False)
    assert decision.promoted and decision.champion == 100.0
    assert store.champion(name)["run_name"] == "a"
    assert "digitgen.registry.gate.decision" not in store.client.get_run(run_id).data.tags


def test_the_gate_run_again_for_the_champion_changes_nothing(store, name):
    _, run_id = _challenge(store, name, "a", 100.0)
    again, _ = _challenge(store, name, "a", 100.0, run_id=run_id)  # `digitgen promote` after a promotion
    assert again.promoted and again.already_champion
    assert len(store.client.search_model_versions(f"name = '{name}'")) == 1


def _contend(args):
    out, uri, name, run, value = args
    store = tracking.Store.open(out, uri)
    run_id = store.start_run("mnist", run, {}, {})
    with locks.gate_lock(out):
        return gate.decide(store, name, run_id, _candidate(run, value), lambda c: None, True).promoted


def test_runs_that_finish_at_once_leave_the_best_as_champion(store, name):
    values = [105.0, 101.0, 103.0, 100.5, 104.0, 102.0]
    uri = None if store.uri.startswith("sqlite") else store.uri
    with mp.get_context("spawn").Pool(3) as pool:
        promoted = pool.map(_contend, [(store.out, uri, name, f"r{i}", v) for i, v in enumerate(values)])
    assert store.champion(name)["value"] == min(values) and store.champion(name)["run_name"] == "r3"
    versions = store.client.search_model_versions(f"name = '{name}'")
    assert len(versions) == sum(promoted), "one version per promotion, none lost or doubled"


def test_binarized_and_grey_level_runs_and_each_dataset_keep_their_own_registered_model(tmp_path):
    from digitgen.config import PipelineConfig
    from tasks.promote import registered_model

    names = {
        registered_model(PipelineConfig(out=tmp_path, dataset=d, binarize=b))
        for d in ("mnist", "fashion-mnist")
        for b in ("none", "dynamic")
    }
    assert names == {
        "digitgen-mnist",
        "digitgen-mnist-binarized",
        "digitgen-fashion-mnist",
        "digitgen-fashion-mnist-binarized",
    }
    assert registered_model(PipelineConfig(out=tmp_path, preset="quality")) == "digitgen-mnist-binarized"


def test_metrics_json_is_flattened_with_dots_and_epochs_are_steps():
    metrics = {
        "n_test": 1000,
        "vae": {
            "test_nll_is_nats": 99.5,
            "samplers": {"gmm": {"inception_score": 8.1}},
            "class_histogram": [0.1, 0.9],
            "ok": True,
        },
        "history": {"vae": [{"epoch": 1, "test_loss": 120.0}, {"epoch": 2, "test_loss": 110.0}]},
    }
    assert run_record.numeric_metrics(metrics) == {
        "n_test": 1000,
        "vae.test_nll_is_nats": 99.5,
        "vae.samplers.gmm.inception_score": 8.1,
    }
    assert run_record.epoch_metrics(metrics["history"]) == [("vae.test_loss", 120.0, 1), ("vae.test_loss", 110.0, 2)]


def test_a_champion_scored_in_another_precision_is_rescored_and_one_that_cannot_load_is_never_replaced(
    tmp_path, data_root
):
    """NLLs from float32 and bfloat16 evaluations are not compared as they stand: the champion is scored again. A
    champion whose model cannot be loaded for that is never replaced, however good the challenger: the gate records
    a rejection that says why, naming the version and how to retire it; retired, the next run becomes champion."""
    from digitgen.config import PipelineConfig
    from digitgen.figures.report import gate_line
    from tasks.promote import _challenge, _decided
    from tasks.track import check_store, open_run

    settings = {"out": tmp_path, "data_root": data_root, "device": "cpu", "test_limit": 1000}

    def run(name, precision):
        config = PipelineConfig(run_name=name, precision=precision, **settings)
        (tmp_path / name).mkdir()
        open_run(check_store(config), config, tmp_path / name)
        return config

    first = _challenge(run("a", "fp32"), str(tmp_path / "a"), 90.0, 1000, True)
    assert first.promoted
    again = _challenge(run("b", "fp32"), str(tmp_path / "b"), 90.0, 1000, False)
    assert again.champion == 90.0 and not again.promoted  # same precision: the stored value, no re-scoring
    refused = _challenge(run("c", "bf16"), str(tmp_path / "c"), 80.0, 1000, True)  # a logged no model files
    assert not refused.promoted and "digitgen-mnist version 1" in refused.reason
    assert "digitgen retire --dataset mnist" in refused.reason
    assert gate_line(refused).startswith("Not promoted: test NLL 80.00 could not be compared with the champion.")
    store = tracking.Store.open(tmp_path, None)
    assert store.champion("digitgen-mnist")["run_name"] == "a", "the alias did not move"
    recorded = [d for d in store.decisions("mnist", "digitgen-mnist") if d["run_name"] == "c"]
    assert len(recorded) == 1 and not recorded[0]["promoted"] and "cannot be loaded" in recorded[0]["reason"]
    assert _decided(recorded[0]) == "rejected: the champion could not be re-scored"
    assert store.retire("digitgen-mnist")["version"] == "1" and store.champion("digitgen-mnist") is None
    assert _challenge(run("d", "bf16"), str(tmp_path / "d"), 80.0, 1000, True).promoted


def _open_new_store(out):
    store = tracking.Store.open(out, None)
    return store.experiment("mnist")


def test_a_new_store_opened_by_several_runs_at_once_is_created_once(tmp_path):
    """Runs that start together on a fresh output folder (a nightly run and a retrain) all create the SQLite store at
    once: its tables are made one process at a time, and every run gets the one experiment."""
    with mp.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_open_new_store, [tmp_path] * 4)
    assert len(set(ids)) == 1


# --- the margin: noise is not an improvement ----------------------------------------------------------------------


def _per_image(mean: float, n: int = 10_000, sd: float = 3.0, seed: int = 0):
    """Per-image NLLs whose mean is exactly `mean`."""
    import torch

    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mean + sd * (noise - noise.mean())


def _with(run, values, margin, training=None, evaluation=EVAL):
    return {
        **_candidate(run, values.mean().item(), evaluation),
        "per_image": values,
        "margin": margin,
        "training": training,
    }


def test_a_challenger_better_by_less_than_the_margin_is_not_promoted_and_the_margin_is_logged(store, name):
    """The margin is the larger of --gate-margin and 2 standard errors of the paired per-image difference, stated in
    the decision, on the run (tag) and in the decision log."""
    champion = _per_image(100.0)
    run_id = store.start_run("mnist", "a", {}, {})
    gate.decide(store, name, run_id, _with("a", champion, 0.5), _never, True, lambda c: champion)
    close = champion - 0.3 + _per_image(0.0, sd=1.0, seed=1)  # 0.3 nats better, a paired SE of about 0.01
    run_id = store.start_run("mnist", "b", {}, {})
    decision = gate.decide(store, name, run_id, _with("b", close, 0.5), _never, True, lambda c: champion)
    assert not decision.promoted and decision.paired and decision.margin_nats == 0.5
    assert decision.difference_nats == pytest.approx(-0.3, abs=0.03) and decision.difference_se < 0.02
    assert float(store.client.get_run(run_id).data.tags["digitgen.registry.gate.margin_nats"]) == 0.5
    assert [d["margin_nats"] for d in store.decisions("mnist", name)] == [None, 0.5]
    from digitgen.figures.report import gate_line

    line = gate_line(decision)
    assert "does not beat the champion a" in line and "difference -0.30 nats, margin 0.50" in line, line
    # the same gap clears a smaller margin: the paired test sees it is real
    run_id = store.start_run("mnist", "c", {}, {})
    decision = gate.decide(store, name, run_id, _with("c", close, 0.1), _never, True, lambda c: champion)
    assert decision.promoted and decision.margin_nats == 0.1


def test_the_margin_widens_with_the_noise_of_the_paired_difference(store, name):
    """Per-image differences that scatter widely (a standard error of 0.3 nats) need a gap beyond 2 of them."""
    champion = _per_image(100.0)
    gate.decide(store, name, store.start_run("mnist", "a", {}, {}), _with("a", champion, 0.0), _never, True)
    noisy = champion - 0.5 + _per_image(0.0, sd=30.0, seed=2)
    decision = gate.decide(
        store, name, store.start_run("mnist", "b", {}, {}), _with("b", noisy, 0.0), _never, False, lambda c: champion
    )
    assert decision.margin_nats == pytest.approx(2 * decision.difference_se) and decision.margin_nats > 0.5
    assert not decision.promoted, decision


def test_a_replicate_of_the_champion_is_never_promoted(store, name):
    """Trained as the champion was, on the same data, another seed: the difference is the seed's luck."""
    training = {"epochs": 10, "lr": 0.005, "data_version": None}
    champion = _per_image(100.0)
    gate.decide(store, name, store.start_run("mnist", "a", {}, {}), _with("a", champion, 0.5, training), _never, True)
    lucky = champion - 3.0
    decision = gate.decide(
        store,
        name,
        store.start_run("mnist", "b", {}, {}),
        _with("b", lucky, 0.5, training),
        _never,
        False,
        lambda c: champion,
    )
    assert decision.replicate and not decision.promoted
    from digitgen.figures.report import gate_line

    assert "a replicate" in gate_line(decision) and "seed's luck" in gate_line(decision)
    longer = {**training, "epochs": 20}  # another setting: the same gap is an improvement
    decision = gate.decide(
        store,
        name,
        store.start_run("mnist", "c", {}, {}),
        _with("c", lucky, 0.5, longer),
        _never,
        False,
        lambda c: champion,
    )
    assert not decision.replicate and decision.promoted
