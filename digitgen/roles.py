"""What each setting of PipelineConfig is for: its roles, declared once in its annotation
(`Annotated[int, Roles("weights", "sweep")]`). digitgen/config.py derives every list of settings by role from them
(`settings_with`)."""

from __future__ import annotations

ROLES = {
    "weights": "a checkpoint's weights depend on it (a resumed run's config.json must still say it)",
    "model": "models.nets.build takes it (PipelineConfig.model_arch)",
    "resume": "it may change when a run is resumed: where and how it runs, not what it trains",
    "place": "where a run runs and writes, not what it computes (PipelineConfig.same_run_as looks past it)",
    "sweep": "a sweep point takes it from the user (the sweep command's options, the digit-sweep flow's parameters)",
    "ingest": "the ingest command takes it",
}


class Roles:
    """What a setting is for, declared once in its annotation (`Annotated[int, Roles("weights", "sweep")]`): every
    list of settings by role (TRAINING_SETTINGS, RESUME_OVERRIDES, SWEEP_SETTINGS, INGEST_SETTINGS, the model's
    arguments, what `same_run_as` ignores) is derived from these by `settings_with`."""

    __slots__ = ("names",)

    def __init__(self, *names: str):
        unknown = set(names) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown setting roles {sorted(unknown)}: known are {sorted(ROLES)}")
        self.names = frozenset(names)

    def __contains__(self, role: str) -> bool:
        return role in self.names

    def __reduce__(self):  # the config travels pickled to Dask workers
        return Roles, tuple(sorted(self.names))

    def __repr__(self) -> str:
        return f"Roles{tuple(sorted(self.names))}"
