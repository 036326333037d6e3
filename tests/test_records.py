"""The champion records of the days before MLflow (champion.json and its decisions log): imported once into the
registry, and refused, naming the file, when damaged."""

import json

import pytest
from test_promote import EVAL

from digitgen.registry import gate, tracking


def test_a_json_champion_record_is_imported_once_with_its_decisions(tmp_path):
    """champion.json and its decisions log, from before MLflow: on first use the champion becomes version 1 of
    digitgen-mnist under the alias, its files logged with it, and the decisions show in the gate's history."""
    run_dir = tmp_path / "out" / "old-run"
    run_dir.mkdir(parents=True)
    (run_dir / "vae.pt").write_bytes(b"weights")
    (run_dir / "config.json").write_text("{}")
    record = {
        "run_dir": str(run_dir),
        "run_name": "old-run",
        "value": 88.5,
        "evaluation": EVAL,
        "promoted_at": "2026-11-30T02:00:00+0000",
        "data_version": "v0-0123456789",
    }
    (tmp_path / "out" / "champion.json").write_text(json.dumps(record))
    decisions = [
        {
            "run_name": "older",
            "value": 90.0,
            "promoted": True,
            "champion_run": None,
            "champion_value": None,
            "decided_at": "2026-11-29T02:00:00+0000",
        },
        {
            "run_name": "old-run",
            "value": 88.5,
            "promoted": True,
            "champion_run": "older",
            "champion_value": 90.0,
            "decided_at": "2026-11-30T02:00:00+0000",
        },
    ]
    (tmp_path / "out" / "champion-decisions.json").write_text(json.dumps(decisions))
    store = tracking.Store.open(tmp_path / "out", None)
    for _ in range(2):
        gate.import_json_record(store, "mnist", "digitgen-mnist", tmp_path / "out" / "champion.json")
    champion = store.champion("digitgen-mnist")
    assert champion["run_name"] == "old-run" and champion["value"] == 88.5 and champion["version"] == "1"
    assert champion["evaluation"] == EVAL and champion["data_version"] == "v0-0123456789"
    assert len(store.client.search_model_versions("name = 'digitgen-mnist'")) == 1, "imported once"
    files = store.download_version("digitgen-mnist", "1", tmp_path / "dl")
    assert (files / "vae.pt").read_bytes() == b"weights"
    assert [d["run_name"] for d in store.decisions("mnist", "digitgen-mnist")] == ["older", "old-run"]


@pytest.mark.parametrize("log", [b'[{"run_name": "a", "value": 90.0},]', b'{"run_name": "a"}', b"[1, 2]"])
def test_a_decision_log_that_does_not_parse_stops_the_import_and_is_never_rewritten(tmp_path, log):
    """One stray comma in the old decisions log: the import stops naming the file, nothing is registered, and the
    log keeps every byte (the history is not replaced by an empty one)."""
    from digitgen.registry.records import ChampionRecordError

    record = {"run_dir": str(tmp_path / "r"), "run_name": "r", "value": 88.5, "evaluation": EVAL}
    (tmp_path / "champion.json").write_text(json.dumps(record))
    (tmp_path / "champion-decisions.json").write_bytes(log)
    store = tracking.Store.open(tmp_path, None)
    with pytest.raises(ChampionRecordError, match=r"decision log .*champion-decisions\.json"):
        gate.import_json_record(store, "mnist", "digitgen-mnist", tmp_path / "champion.json")
    assert (tmp_path / "champion-decisions.json").read_bytes() == log
    assert store.champion("digitgen-mnist") is None and not store.client.search_runs([store.experiment("mnist")])


@pytest.mark.parametrize(
    "content",
    [
        b"\x89\xff\x00garbage",
        b"[]",
        b"{}",
        b'{"run_dir": 1}',
        b'{"run_dir": "r", "run_name": "r", "value": NaN, "evaluation": {}}',
    ],
)
def test_a_damaged_json_champion_record_is_named(tmp_path, content):
    from digitgen.registry.records import ChampionRecordError

    path = tmp_path / "champion.json"
    path.write_bytes(content)
    store = tracking.Store.open(tmp_path, None)
    with pytest.raises(ChampionRecordError, match=str(path)):
        gate.import_json_record(store, "mnist", "digitgen-mnist", path)
