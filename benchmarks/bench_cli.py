"""How fast the `digitgen` command answers (issue 28.5: under 1 s): `digitgen --help`, `digitgen run --help` and
`digitgen versions`, each the median wall time of 5 fresh processes (the first, which fills the OS's file cache, is
not counted). Heavy libraries (torch, Prefect, MLflow, Great Expectations) are imported only by the commands that
use them.

    python benchmarks/bench_cli.py            # prints the figures
    python benchmarks/bench_cli.py --write    # and puts them in benchmarks/results.md (section "CLI answer time")
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
HEADING = "## CLI answer time"
TARGET = 1.0  # seconds


def timed(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def replace_section(results: Path, heading: str, section: str) -> None:
    """Put `section` (starting with `heading`) in results.md in place of the section of that heading, else last."""
    text = results.read_text() if results.is_file() else ""
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip("\n") + ("\n\n" + text[end + 1 :] if end >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    results.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="put the figures in benchmarks/results.md")
    ns = p.parse_args()
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import stage_source
    from models.train import cpu_name

    digitgen = str(Path(sys.executable).parent / "digitgen")
    source = Path(os.environ.get("DIGITGEN_DATA_SOURCE") or ROOT.parent / "shared" / "data")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        stage_source(source, root, get_dataset("mnist"))
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DIGITGEN_DATA_ROOT": str(root)}
        commands = {
            "digitgen --help": ["--help"],
            "digitgen run --help": ["run", "--help"],
            "digitgen versions": ["versions"],
        }
        rows = []
        for name, args in commands.items():
            timed([digitgen, *args], env)  # warm the file cache
            median = statistics.median(timed([digitgen, *args], env) for _ in range(5))
            rows.append(f"| `{name}` | {median:.2f} | {'met' if median < TARGET else 'NOT met'} |")
    lines = ["| command | median wall (s) | under 1 s |", "|---|---:|---|", *rows]
    print("\n".join(lines))
    if ns.write:
        section = (
            f"{HEADING}\n\nProduced by `python benchmarks/bench_cli.py --write` on {time.strftime('%Y-%m-%d')} "
            f"on a {os.cpu_count()}-core {cpu_name()}: the median of 5 fresh processes each.\n\n"
            + "\n".join(lines)
            + "\n"
        )
        replace_section(ROOT / "benchmarks" / "results.md", HEADING, section)


if __name__ == "__main__":
    main()
