import json
import multiprocessing as mp

import pytest

from models.registry import challenge, read_champion

EVAL = {"is_samples": 100, "n_test": 10000, "seed": 0}


def _candidate(name, value, evaluation=EVAL):
    return {"run_dir": f"/runs/{name}", "run_name": name, "value": value, "evaluation": evaluation}


def _never(champion):
    raise AssertionError("same evaluation settings: the champion must not be re-scored")


def test_first_run_becomes_champion(tmp_path):
    path = tmp_path / "champion.json"
    decision = challenge(path, _candidate("a", 100.0), _never)
    assert decision["promoted"] and decision["champion"] is None
    assert read_champion(path)["run_name"] == "a"


def test_worse_challenger_is_not_promoted_and_better_one_is(tmp_path):
    path = tmp_path / "champion.json"
    challenge(path, _candidate("a", 100.0), _never)
    worse = challenge(path, _candidate("b", 101.5), _never)
    assert not worse["promoted"] and worse["champion"] == 100.0 and worse["challenger"] == 101.5
    assert read_champion(path)["run_name"] == "a"
    better = challenge(path, _candidate("c", 99.0), _never)
    assert better["promoted"] and better["champion_run"] == "a"
    record = read_champion(path)
    assert record["run_name"] == "c" and record["value"] == 99.0
    assert [h["run_name"] for h in record["history"]] == ["a"]


def test_champion_is_rescored_under_the_challengers_settings(tmp_path):
    path = tmp_path / "champion.json"
    challenge(path, _candidate("a", 90.0, {**EVAL, "is_samples": 10}), _never)
    seen = []
    decision = challenge(path, _candidate("b", 95.0), lambda champ: seen.append(champ["run_name"]) or 96.0)
    assert seen == ["a"]
    assert decision["promoted"] and decision["champion"] == 96.0


def _contend(args):
    path, name, value = args
    return challenge(path, _candidate(name, value), lambda c: None)["promoted"]


def test_concurrent_challenges_keep_the_best(tmp_path):
    path = str(tmp_path / "champion.json")
    values = [105.0, 101.0, 103.0, 100.5, 104.0, 102.0, 100.9, 106.0]
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_contend, [(path, f"r{i}", v) for i, v in enumerate(values)])
    record = json.loads((tmp_path / "champion.json").read_text())
    assert record["value"] == min(values) and record["run_name"] == "r3"


def test_a_resumed_champion_stays_promoted(tmp_path):
    path = tmp_path / "champion.json"
    challenge(path, _candidate("a", 100.0), _never)
    again = challenge(path, _candidate("a", 100.0), _never)  # the same run, resumed after its promote step
    assert again["promoted"] and read_champion(path)["run_name"] == "a"


def test_binarized_and_grey_level_runs_keep_separate_champions(tmp_path):
    from digitgen.config import PipelineConfig
    from tasks.promote import champion_path

    grey, binary = PipelineConfig(out=tmp_path), PipelineConfig(out=tmp_path, preset="quality")
    assert champion_path(grey) == tmp_path / "champion.json"
    assert champion_path(binary) == tmp_path / "champion-binarized.json"
    challenge(champion_path(binary), _candidate("q", 81.0), _never)
    # a grey-level run finds no champion of its kind: promoted without re-scoring the binarized one
    assert challenge(champion_path(grey), _candidate("d", 99.0), _never)["promoted"]


def test_each_dataset_keeps_its_own_champions(tmp_path):
    from digitgen.config import PipelineConfig
    from tasks.promote import champion_path

    paths = {
        champion_path(PipelineConfig(out=tmp_path, dataset=d, binarize=b))
        for d in ("mnist", "fashion-mnist")
        for b in ("none", "dynamic")
    }
    assert len(paths) == 4
    assert tmp_path / "champion-fashion-mnist.json" in paths
    assert tmp_path / "champion-fashion-mnist-binarized.json" in paths


def test_resuming_a_promoted_run_keeps_the_champion_history(tmp_path):
    path = tmp_path / "champion.json"
    challenge(path, _candidate("c1", 100.0), _never)
    challenge(path, _candidate("c2", 99.0), _never)
    before = path.read_bytes()
    again = challenge(path, _candidate("c2", 99.0), _never)  # c2 resumed after it was promoted
    assert again["promoted"] and again.get("already_champion")
    assert path.read_bytes() == before, "the record, and its history, are untouched"
    assert [h["run_name"] for h in read_champion(path)["history"]] == ["c1"]


def test_every_decision_is_logged_and_a_rejection_leaves_the_record(tmp_path):
    from models.plots import save_decisions
    from models.registry import METRIC, read_decisions

    path = tmp_path / "champion.json"
    challenge(path, _candidate("a", 100.0), _never)
    before = path.read_bytes()
    challenge(path, _candidate("b", 101.5), _never)
    assert path.read_bytes() == before, "a rejected challenger does not touch the champion record"
    challenge(path, _candidate("c", 99.0), _never)
    challenge(path, _candidate("d", 98.0), _never, commit=False)  # only decided, never committed: not logged
    log = read_decisions(path)
    assert [(d["run_name"], d["promoted"], d["champion_run"]) for d in log] == [
        ("a", True, None), ("b", False, "a"), ("c", True, "a")]  # fmt: skip
    assert log[1]["value"] == 101.5 and log[1]["champion_value"] == 100.0
    figure = save_decisions(tmp_path / "history.png", log, METRIC)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5_000


def test_deciding_without_committing_writes_nothing(tmp_path):
    path = tmp_path / "champion.json"
    challenge(path, _candidate("a", 100.0), _never)
    before = path.read_bytes()
    decision = challenge(path, _candidate("b", 90.0), _never, commit=False)
    assert decision["promoted"] and decision["champion"] == 100.0
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"\x89\xff\x00garbage", b"[]", b"{}", b'{"run_dir": 1}'])
def test_a_damaged_champion_record_is_named(tmp_path, content):
    from models.registry import ChampionRecordError

    path = tmp_path / "champion.json"
    path.write_bytes(content)
    with pytest.raises(ChampionRecordError, match=str(path)):
        challenge(path, _candidate("a", 100.0), _never)


def test_a_champion_scored_in_another_precision_is_rescored(tmp_path, data_root):
    """NLLs from float32 and bfloat16 evaluations are not compared as they stand: the champion is scored again."""
    from types import SimpleNamespace

    from digitgen.config import PipelineConfig
    from tasks.promote import _challenge

    metrics = SimpleNamespace(n_test=1000, vae=SimpleNamespace(test_nll_is_nats=90.0))
    settings = {"out": tmp_path, "data_root": data_root, "device": "cpu", "test_limit": 1000}
    first = _challenge(PipelineConfig(run_name="a", precision="fp32", **settings), str(tmp_path / "a"), metrics, True)
    assert first["promoted"]
    again = _challenge(PipelineConfig(run_name="b", precision="fp32", **settings), str(tmp_path / "b"), metrics, False)
    assert again["champion"] == 90.0 and not again["promoted"]  # same precision: the stored value, no re-scoring
    other = _challenge(PipelineConfig(run_name="c", precision="bf16", **settings), str(tmp_path / "c"), metrics, False)
    assert other["champion"] is None and other["champion_run"] == "a"  # re-scoring was tried (a has no vae.pt)
