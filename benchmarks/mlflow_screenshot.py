"""The README's MLflow screenshot, from real runs: two short pipeline runs (1 and 3 epochs) tracked in a fresh local
store, MLflow's UI (`mlflow server`, as `make mlflow` starts it) on that store, and its run comparison captured in
headless Chromium into docs/mlflow-compare.png.

    .venv/bin/python benchmarks/mlflow_screenshot.py [--out /tmp/mlflow-shot]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/mlflow-shot"))
    args = ap.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    runs = []
    for epochs in (1, 3):
        cmd = [
            str(BIN / "digitgen"),
            "run",
            "--epochs",
            str(epochs),
            "--train-limit",
            "20000",
            "--test-limit",
            "2000",
            "--is-samples",
            "20",
            "--quality-samples",
            "2000",
            "--out",
            str(out),
            "--run-name",
            f"{epochs}-epochs",
            "--no-progress",
        ]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads((Path(done.stdout.strip().splitlines()[-1]) / "mlflow.json").read_text()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{out}/mlflow.db",
            "--artifacts-destination",
            str(out / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        ids = json.dumps([r["run_id"] for r in runs])
        page_url = f"{url}/#/compare-runs?runs={ids}&experiments={json.dumps([runs[0]['experiment_id']])}"
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(page_url)
            page.wait_for_timeout(8000)
            target = ROOT / "docs" / "mlflow-compare.png"
            page.screenshot(path=str(target), full_page=False)
            browser.close()
        print(target)
    finally:
        os.killpg(server.pid, 15)


if __name__ == "__main__":
    main()
