"""The `digitgen` command: its settings, flags and help, and the refusals of bad settings before anything runs."""

import os
from pathlib import Path

import pytest
from cli_runs import _digitgen, _digitgen_loading, _refused_without_torch

from digitgen.cli import parser

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_setting():
    text = parser()._subparsers._group_actions[0].choices["run"].format_help()
    for flag in [
        "--epochs",
        "--latent-dim",
        "--beta",
        "--batch-size",
        "--lr",
        "--seed",
        "--train-limit",
        "--data-root",
        "--data-source",
        "--out",
        "--device",
    ]:
        assert flag in text


def test_boolean_settings_have_on_and_off_flags():
    from digitgen.cli import config_from_args

    ns = parser().parse_args(["run", "--arch", "conv", "--binarize", "dynamic", "--pixel-head", "--no-progress"])
    config = config_from_args(ns)
    assert config.pixel_head is True and config.progress is False
    assert config_from_args(parser().parse_args(["run", "--preset", "quality", "--no-pixel-head"])).pixel_head is False


def test_the_quality_preset_alone_trains_the_headline_configuration():
    """`--preset quality` with no other option is the first row of benchmarks/quality.md (80.68 nats): 50 epochs of
    the conv body with a pixel head and a learned mixture prior, binarized, latent 32, batch 64, lr 0.0015, k=1000."""
    from digitgen.cli import config_from_args

    c = config_from_args(parser().parse_args(["run", "--preset", "quality"]))
    assert (c.epochs, c.batch_size, c.latent_dim, c.lr, c.is_samples) == (50, 64, 32, 1.5e-3, 1000)
    assert (c.arch, c.pixel_head, c.prior, c.binarize, c.kl_warmup) == ("conv", True, "mixture", "dynamic", 2.0)
    headline = (ROOT / "benchmarks" / "quality.md").read_text().split("| `quality`")[1]
    assert "50 epochs, batch 64" in headline.split("|")[0] and "80.68" in headline


def test_numeric_choices_parse_as_numbers(capsys):
    import pytest

    from digitgen.cli import config_from_args

    ns = parser().parse_args(["run", "--preset", "quality", "--pixel-kernel", "5"])
    assert config_from_args(ns).pixel_kernel == 5
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--pixel-kernel", "4"])
    assert "invalid choice: 4 (choose from 3, 5, 7)" in capsys.readouterr().err


def test_resuming_a_run_from_before_a_new_setting_keeps_it_off(tmp_path):
    """A quality run saved before pixel_head, kl_warmup and prior existed resumes without them, not with the preset's."""
    import json

    from digitgen.config import PipelineConfig

    saved = PipelineConfig(preset="quality", out=tmp_path, run_name="old").model_dump(mode="json")
    del saved["pixel_head"], saved["kl_warmup"], saved["prior"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    config = PipelineConfig.for_resume(tmp_path / "old")
    assert config.pixel_head is False and config.kl_warmup == 0 and config.arch == "conv" and config.prior == "normal"


@pytest.mark.parametrize(
    "args, setting",
    [
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--latent-dim", "0"], "--latent-dim"),
        (["--beta", "-0.5"], "--beta"),
        (["--data-source", "/no/such/folder"], "--data-source"),
        (["--train-limit", "100", "--batch-size", "200"], "batch_size"),
        (["--seed", "123456789012345678901"], "--seed"),
        (["--hidden", "5000000"], "--hidden"),
        (["--data-root", "/etc/hostname/data"], "--data-root"),
    ],
)
def test_invalid_settings_are_refused_before_anything_runs(tmp_path, args, setting):
    out = tmp_path / "out"
    done = _digitgen("run", *args, "--out", str(out))
    assert done.returncode != 0
    assert setting in done.stderr, done.stderr
    assert "nothing was run" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_unknown_device_is_refused(tmp_path):
    done = _digitgen("run", "--device", "tpu", "--out", str(tmp_path))
    assert done.returncode == 2 and "--device" in done.stderr


def test_unwritable_output_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = _digitgen("run", "--out", str(blocker / "sub"))
    assert done.returncode != 0 and "--out" in done.stderr


def test_every_setting_is_a_flow_parameter():
    import inspect

    from digitgen.config import PipelineConfig
    from flows.pipeline import digit_pipeline

    assert set(inspect.signature(digit_pipeline.fn).parameters) == set(PipelineConfig.model_fields)


def test_the_run_form_shows_choices_as_dropdowns_and_descriptions_whole():
    """Prefect's form draws an enum as a dropdown, but `Literal | None` as a type toggle and `X | None | None` as a
    blank-labelled button; a description's `<Name>` is swallowed as an HTML tag."""
    from prefect.utilities.callables import parameter_schema

    from digitgen.config import PipelineConfig
    from flows.pipeline import digit_pipeline

    props = parameter_schema(digit_pipeline.fn).model_dump()["properties"]
    for name in ("arch", "binarize", "device", "precision", "prior", "task_runner"):
        assert None in props[name]["enum"] and props[name]["default"] is None, (name, props[name])
    assert props["dataset"]["enum"] == ["mnist", "fashion-mnist"] and props["pixel_kernel"]["enum"] == [3, 5, 7]
    for name, p in props.items():
        assert not any("anyOf" in a for a in p.get("anyOf", [])), f"{name}: a nested None-or type toggle"
        assert "<" not in p["description"], f"{name}: {p['description']}"
    assert all("<" not in (f.description or "") for f in PipelineConfig.model_fields.values())


def test_project_server_binds_to_loopback_only():
    makefile = (ROOT / "Makefile").read_text()
    server = makefile[makefile.index("\nserver:") :].split("\n\n")[0]
    assert "prefect server start --host 127.0.0.1" in server


@pytest.mark.parametrize("content", ["[]", "null", "7"])
def test_resume_of_a_config_that_is_not_settings_is_refused_in_one_line(tmp_path, content):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    done = _digitgen("run", "--resume", str(folder))
    assert done.returncode != 0 and "cannot be resumed" in done.stderr and "Traceback" not in done.stderr


def test_resume_refuses_changed_training_settings(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text('{"epochs": 2}')
    done = _digitgen("run", "--resume", str(folder), "--epochs", "5")
    assert done.returncode != 0 and "--epochs cannot change when resuming" in done.stderr
    done = _digitgen("run", "--resume", str(tmp_path / "nothing"))
    assert done.returncode != 0 and "not a run folder" in done.stderr


def test_serve_refuses_unknown_deployments():
    done = _digitgen("serve", "--only", "nightlly")
    assert done.returncode != 0 and "no deployment named nightlly" in done.stderr


@pytest.mark.parametrize(
    "entry, named",
    [
        ("    build: [{prefect.deployments.steps.run_shell_script: {script: 'echo'}}]", "build"),
        ("    sla: []\n    scheduel: {cron: '0 * * * *'}", "scheduel, sla"),
        ("    triggers: [{type: telepathy, expect: [x]}]", "telepathy"),
        ("    schedules: [{every: 60}]", "schedules"),
    ],
)
def test_serve_refuses_what_it_cannot_honour_by_name(tmp_path, entry, named):
    (tmp_path / "prefect.yaml").write_text(
        f"deployments:\n  - name: odd\n    entrypoint: flows/check_data.py:check_data\n{entry}\n"
    )
    done = _refused_without_torch("serve", "--prefect-file", tmp_path / "prefect.yaml")  # before any flow loads
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "digitgen serve:" in done.stderr and "odd" in done.stderr and named in done.stderr, done.stderr


def test_abbreviations_are_refused_and_typos_get_a_suggestion(tmp_path):
    for typo in ("--epoch", "--epcohs"):
        done = _digitgen("run", typo, "3", "--out", str(tmp_path))
        assert done.returncode == 2
        assert f"{typo} (did you mean --epochs?)" in done.stderr, done.stderr
    assert not any(tmp_path.iterdir()), "nothing was run"


def test_help_names_each_default_once():
    text = parser()._subparsers._group_actions[0].choices["run"].format_help()
    flat = " ".join(text.split())
    assert flat.count("(default: a timestamp)") == 1
    assert "DIGITGEN_OUT" in flat


def test_digitgen_uses_the_projects_prefect_home_like_make(monkeypatch):
    from digitgen.preflight import project_defaults

    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.delenv("DIGITGEN_DATA_SOURCE", raising=False)
    project_defaults()
    assert os.environ["PREFECT_HOME"] == str(ROOT / ".prefect")
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_HOME", "/elsewhere")
    project_defaults()
    assert os.environ["PREFECT_HOME"] == "/elsewhere", "the environment wins"


def test_the_server_check_sends_prefects_api_key():
    """`digitgen` asks whether the server is up through Prefect's client, so a server behind an API key (Prefect
    Cloud) is reachable with the key and reported down without it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    from digitgen.server_setup import require_reachable_server

    class Guarded(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            ok = self.headers.get("Authorization") == "Bearer sekrit"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"true" if ok else b'{"detail": "no key"}')

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/api"
    try:
        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_KEY: "sekrit"}):
            require_reachable_server()  # no exit
        with temporary_settings({PREFECT_API_URL: url}, restore_defaults={PREFECT_API_KEY}):
            with pytest.raises(SystemExit, match="is not reachable"):
                require_reachable_server()
    finally:
        httpd.shutdown()


def test_each_list_of_settings_by_role_is_derived_from_the_settings_own_declaration():
    """A setting declares its roles once; a new one shows up in every list of its roles: what a checkpoint's weights
    depend on, what a resume may change, what `same_run_as` looks past, what a sweep and ingest take, and what the
    network is built from."""
    from typing import Annotated

    from digitgen import config
    from digitgen.config import PipelineConfig, Roles, settings_with

    class Extended(PipelineConfig):
        widget: Annotated[int, Roles("weights", "model", "resume", "place", "sweep", "ingest")] = 3

    for role in config.ROLES:
        assert "widget" in settings_with(role, Extended) and "widget" not in settings_with(role), role
    assert Extended(run_name="a").model_arch("vae")["widget"] == 3
    assert Extended(run_name="a").same_run_as(Extended(run_name="a", widget=4)), "a place setting is looked past"
    with pytest.raises(ValueError, match="unknown setting roles"):
        Roles("wieghts")
    # the lists the code uses are these derivations, and train_limit (which training uses) is among the weights'
    assert config.TRAINING_SETTINGS == settings_with("weights") and "train_limit" in config.TRAINING_SETTINGS
    assert config.RESUME_OVERRIDES == set(settings_with("resume")) and config.INGEST_SETTINGS == settings_with("ingest")
    assert config.SWEEP_SETTINGS == list(settings_with("sweep"))
    from models.nets import build

    built = build(PipelineConfig(preset="quality").model_arch("vae")).arch()
    assert {k: v for k, v in PipelineConfig(preset="quality").model_arch("vae").items() if k in built} == built


def test_help_and_versions_import_no_heavy_library(tmp_path, data_root):
    """`digitgen --help`, `run --help` and `versions` answer at once: torch, Prefect, MLflow and Great Expectations
    are imported only by the commands that use them (benchmarks/bench_cli.py times them)."""
    for args in (["--help"], ["run", "--help"], ["versions", "--data-root", str(data_root)]):
        done, loaded = _digitgen_loading(*args)
        assert done.returncode == 0, done.stderr
        assert loaded == [], (args, done.stdout[-500:])
    assert "v0-" in done.stdout, "versions listed the base version (made now, from the archives alone)"


@pytest.mark.parametrize(("ending", "code"), [("", 0), ("sys.exit(3)", 3), ("sys.exit('digitgen: refused')", 1)])
def test_the_command_ends_with_its_code_and_output_after_the_exit_handlers_and_skips_the_teardown(
    tmp_path, ending, code
):
    """`digitgen` leaves without the interpreter's teardown, in which the CUDA build of torch grows a process by about
    100 MB: its exit code, its last unflushed line and the exit handlers registered while it ran (Prefect's flush
    of logs and events) are kept; the objects left to the teardown are never finalized."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import atexit, sys
        import digitgen.cli as cli

        class Teardown:
            def __del__(self):
                open({str(tmp_path / "teardown")!r}, "w").close()

        def main():
            atexit.register(lambda: open({str(tmp_path / "handler")!r}, "w").close())
            cli.left = Teardown()
            print("last line", end="")
            {ending}

        cli.main = main
        sys.exit(cli.entry())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == code and done.stdout == "last line", done.stderr
    assert done.stderr.strip() == ("digitgen: refused" if code == 1 else "")
    assert (tmp_path / "handler").exists() and not (tmp_path / "teardown").exists()


def test_the_commands_exit_comes_after_every_exit_handler_but_pythons_teardown():
    """Exit handlers run last-registered first, so `entry`'s exit comes after every handler registered once it is
    called (logging's, Prefect's, MLflow's, multiprocessing's) and skips only those registered before: importing the
    command registers one, digitgen's `gc.freeze` (which the skipped teardown makes moot), and loads none of those
    libraries."""
    import subprocess
    import sys

    code = (
        "import atexit, sys; import digitgen.cli; "
        "print(atexit._ncallbacks(), sorted({'logging', 'multiprocessing', 'prefect', 'mlflow'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split(maxsplit=1) == ["1", "[]\n"], done.stdout + done.stderr
