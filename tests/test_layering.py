import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


ROOMS = {  # each room and what importing all of it must not load
    "models": {"prefect", "great_expectations", "pandas", "matplotlib", "mlflow", "PIL"},
    "digitgen/data": {"prefect", "mlflow", "matplotlib"},
    "digitgen/figures": {"prefect", "mlflow", "great_expectations"},
    "digitgen/registry": {"prefect", "torch", "great_expectations", "matplotlib"},
}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_holds_what_its_name_says(room):
    """models/ is plain PyTorch (models, losses, training, metrics): no Prefect, and none of the data, registry or
    figure libraries, which live in rooms of their own under digitgen/; none of those rooms imports Prefect."""
    modules = sorted(
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for p in (ROOT / room).glob("*.py")
        if p.stem != "__init__"
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(ROOMS[room])!r}))\nprint(bad)\nassert not bad"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(modules) >= 2


def test_flows_do_no_tensor_work():
    for path in (ROOT / "flows").glob("*.py"):
        assert "import torch" not in path.read_text(), f"{path.name} should only compose tasks"


def test_the_suite_never_touches_the_users_prefect_database():
    """Test runs go to a Prefect home of their own, not to the project's .prefect/ that `make server` shows."""
    from pathlib import Path

    from prefect.settings import PREFECT_HOME

    root = Path(__file__).resolve().parents[1]
    home = Path(PREFECT_HOME.value()).resolve()
    assert home != (root / ".prefect").resolve() and "digitgen-test-prefect-" in home.name


def test_the_suite_leaves_no_folders_of_its_own_in_the_machines_temp(tmp_path):
    """Its Prefect home and cache go when it ends: nightly suites on a team's CI machine do not fill /tmp."""
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DIGITGEN_SUITE_CACHE", "PYTEST_ADDOPTS")}
    env["TMPDIR"] = str(temp)
    this = f"{Path(__file__).relative_to(ROOT)}::test_the_suite_never_touches_the_users_prefect_database"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", this],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [p.name for p in temp.iterdir() if p.name.startswith("digitgen-test-")]


def test_errors_written_for_users_share_one_base_class():
    """The CLI prints these as one line by their class, never by reading their text."""
    from digitgen.data.loading import DataSourceError
    from digitgen.data.versions import VersionError
    from digitgen.errors import DigitgenError
    from digitgen.registry.records import ChampionRecordError
    from digitgen.serve import ServeError
    from flows.check_data import IngestFailedError
    from models.checkpoint import CheckpointError
    from models.generate import GenerateError
    from models.samplers import SamplerError
    from models.train import NonFiniteLossError
    from tasks.batches import BatchRefusedError
    from tasks.ingest import DownloadError, LocalDataError
    from tasks.run import RunFolderError
    from tasks.validate import DataValidationError

    for error in (
        IngestFailedError,
        CheckpointError,
        DataSourceError,
        ChampionRecordError,
        NonFiniteLossError,
        VersionError,
        BatchRefusedError,
        DownloadError,
        RunFolderError,
        DataValidationError,
        SamplerError,
        GenerateError,
        ServeError,
        LocalDataError,
    ):
        assert issubclass(error, DigitgenError), error


def test_tasks_hand_each_other_typed_results_and_no_private_names():
    """Training, the judge, the samplers and the gate return small typed objects (read by attribute, not by string
    key), and no task module imports a private name (`_x`) of another."""
    import ast
    import typing

    from pydantic import BaseModel

    from tasks.classifier import train_judge
    from tasks.promote import gate, promote
    from tasks.samplers import fit_samplers
    from tasks.train import train_ae, train_vae

    for task in (train_vae, train_ae, train_judge, fit_samplers, gate, promote):
        returned = typing.get_type_hints(task.fn)["return"]
        assert isinstance(returned, type) and issubclass(returned, BaseModel), (task.name, returned)
    for path in sorted((ROOT / "tasks").glob("*.py")) + sorted((ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks."):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_the_formatter_owns_the_layout():
    """`ruff format` lays the code out (pinned in pyproject.toml, so its layout is the same everywhere): the tree is
    formatted, and at most 10 `# fmt: skip` markers hold a hand layout against it."""
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run([str(ruff), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    marker = "# fmt: " + "skip"  # not one itself
    markers = sum((ROOT / f).read_text().count(marker) for f in tracked if (ROOT / f).is_file())
    assert markers <= 10, f"{markers} {marker!r} markers"
