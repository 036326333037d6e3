"""The suite's order and its split over pytest-xdist's workers (registered by conftest.pytest_configure)."""

from __future__ import annotations

import pytest

SERVED_MODULES = {
    "tests/test_server.py",
    "tests/test_server_recovery.py",
    "tests/test_ui.py",
}  # the modules on the `served` server


def _module(nodeid: str) -> str:
    """The test module of a test id (`tests/test_x.py::test_y[z]` -> `tests/test_x.py`)."""
    return nodeid.split("::", 1)[0]


def _served(item) -> bool:
    return "served" in getattr(item, "fixturenames", ())


# Seconds each module took on `make test`'s workers (pytest --durations=0, 2-core AMD EPYC Zen 4, 2026-12-05): only
# the order below uses them, so that the suite does not end with one worker on a long module while the others have
# nothing left. A module not listed counts as short; stale figures only cost time.
MODULE_SECONDS = {
    "tests/test_recovery.py": 197,
    "tests/test_team.py": 158,
    "tests/test_interrupts.py": 117,
    "tests/test_flow.py": 102,
    "tests/test_tracking.py": 92,
    "tests/test_dask_cluster.py": 87,
    "tests/test_refusals.py": 78,
    "tests/test_batches.py": 78,
    "tests/test_promote.py": 70,
    "tests/test_generate.py": 59,
    "tests/test_cli.py": 32,
    "tests/test_sweep.py": 28,
    "tests/test_hostile.py": 15,
    "tests/test_data_source.py": 15,
    "tests/test_version_records.py": 14,
    "tests/test_layering.py": 13,
    "tests/test_new_store.py": 12,
    "tests/test_bench.py": 11,
}
SHORT = 40  # seconds: the modules that end the suite, filling the workers' last minute


class Ordering:
    """The order of the tests: see pytest_collection_modifyitems."""

    @pytest.hookimpl
    def pytest_collection_modifyitems(self, config, items):
        """Alone (`pytest`), the tests on the shared live server run last (in their order): the server, its runner
        and their services then stop with the session instead of taking CPU from every test after them. On
        pytest-xdist's workers (`make test`) they go first, being the longest unit of work (mostly waiting on the
        server: a lease running out, a runner polling). Then the long modules, longest first (MODULE_SECONDS), those
        that need no judge (`judged_root`, trained once per suite, over a minute) before those that do: the other
        workers run them while the judge is trained, instead of waiting on its lock. The short modules come last,
        longest first: whichever worker frees up near the end, the served unit's included, takes a short one, and the
        workers end within seconds of each other."""
        served = [item for item in items if _served(item)]
        assert {_module(item.nodeid) for item in served} <= SERVED_MODULES, "add the module to SERVED_MODULES"
        rest = [item for item in items if not _served(item)]
        if not hasattr(config, "workerinput"):
            items[:] = rest + served
            return
        judged = {_module(item.nodeid) for item in rest if "judged_root" in getattr(item, "fixturenames", ())}

        def order(item) -> tuple[bool, bool, int]:
            module = _module(item.nodeid)
            seconds = MODULE_SECONDS.get(module, 0)
            short = seconds < SHORT
            return short, module in judged and not short, -seconds

        items[:] = served + sorted(rest, key=order)  # sorted() is stable: a module's tests stay together, in order


class ModuleScheduling:
    """`make test` runs the suite on three pytest-xdist workers, one module at a time each: a module's fixtures are set
    up once, on one worker, and the modules on the shared live server (`served`) are one unit. Units go out in
    collection order (the served unit first)."""

    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config, log):
        from xdist.scheduler import LoadScopeScheduling

        class ByModule(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                module = _module(nodeid)
                return "served" if module in SERVED_MODULES else module

            def _reschedule(self, node) -> None:
                """xdist's rule, but a worker takes its next module when one test of its own is left, not two: it
                needs the next test's id before it starts its last, and no sooner. With two, the served unit took a
                module while its last two tests (over a minute and a half) ran, from the head of the queue as it was
                then: a long module, which ended the suite alone on that worker."""
                if node.shutting_down:
                    return
                if not self.workqueue:
                    node.shutdown()
                    return
                if self._pending_of(self.assigned_work[node]) <= 1:
                    self._assign_work_unit(node)

        config.option.loadscopereorder = False
        return ByModule(config, log)
