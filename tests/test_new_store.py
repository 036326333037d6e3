"""A new local MLflow store is a copy of an empty one that MLflow made once on this machine: the same store as one
MLflow makes itself, in milliseconds instead of its 60-odd schema migrations."""

from __future__ import annotations

import sqlite3

from digitgen.registry.new_store import template_path
from digitgen.registry.tracking import Store, store_uri


def _rows(db, sql):
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def _store_with_a_run(out):
    store = Store(store_uri(out, None), out)
    run_id = store.start_run("mnist", "r", {"beta": 1.0}, {"digitgen.k": "v"})
    store.log_metrics(run_id, {"test_nll_is_nats": 100.5})
    return store, run_id


def test_a_new_store_is_a_copy_of_the_machines_empty_store_and_works_as_one_mlflow_made(tmp_path, monkeypatch):
    from mlflow.store.db.utils import _get_latest_schema_revision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert not template_path().exists()
    first, run_id = _store_with_a_run(tmp_path / "a")
    assert template_path().is_file(), "the first new store made the machine's empty one"
    template = template_path().read_bytes()
    second, other = _store_with_a_run(tmp_path / "b")
    assert template_path().read_bytes() == template, "the empty store is only ever copied"
    for out, store, rid in ((tmp_path / "a", first, run_id), (tmp_path / "b", second, other)):
        db = out / "mlflow.db"
        assert _rows(db, "select version_num from alembic_version") == [(_get_latest_schema_revision(),)]
        experiments = dict(_rows(db, "select name, artifact_location from experiments"))
        assert experiments["Default"] == str(tmp_path / "mlruns" / "0"), "MLflow's own Default experiment"
        assert experiments["digitgen-mnist"] == (out / "mlartifacts" / "digitgen-mnist").as_uri()
        assert store.client.get_run(rid).data.metrics == {"test_nll_is_nats": 100.5}
        assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert [r.info.run_id for r in second.client.search_runs([second.experiment("mnist")])] == [other]


def test_without_a_usable_cache_folder_mlflow_makes_the_store_itself(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    store, run_id = _store_with_a_run(tmp_path / "out")
    assert store.client.get_run(run_id).data.params == {"beta": "1.0"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_damaged_empty_store_is_made_again_and_a_store_made_meanwhile_is_never_replaced(tmp_path, monkeypatch):
    from digitgen.registry.new_store import seed_from_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _store_with_a_run(tmp_path / "a")
    whole = template_path().stat().st_size
    template_path().write_bytes(template_path().read_bytes()[: whole // 3])  # cut short, as by a full disk
    store, run_id = _store_with_a_run(tmp_path / "b")
    assert store.client.get_run(run_id).data.metrics == {"test_nll_is_nats": 100.5}
    assert template_path().stat().st_size == whole, "made again, whole"
    made = tmp_path / "c" / "mlflow.db"  # e.g. by `make mlflow`'s server, which takes no lock
    made.parent.mkdir()
    made.write_bytes(b"theirs")
    assert not seed_from_template(f"sqlite:///{made}") and made.read_bytes() == b"theirs"
    assert sorted(p.name for p in made.parent.iterdir()) == ["mlflow.db"], "no copy left beside it"
