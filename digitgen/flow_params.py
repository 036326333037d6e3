"""The config's settings as a flow's typed parameters: what Prefect's run form draws and the server validates."""

from __future__ import annotations

import inspect
from typing import Annotated, Literal, get_args, get_origin

from pydantic import Field

from digitgen.config import PRESETS, RESUME_OVERRIDES, PipelineConfig

# Settings a preset may set: in a flow's run form they default to "unset" (None), so that choosing a preset works.
PRESET_SETTINGS = frozenset().union(*PRESETS.values())


def _describe(name: str) -> str:
    field = PipelineConfig.model_fields[name]
    text = field.description or name
    if name in PRESET_SETTINGS:
        shown = {p: v.get(name, field.default) for p, v in PRESETS.items()}
        text += " (unset: " + ", ".join(f"{v!r} with preset {p}" for p, v in shown.items()) + ")"
    elif field.default_factory is not None:
        text += " (unset: the environment's value or the built-in default)"
    elif name in RESUME_OVERRIDES:
        text += f" (unset: {field.default!r}, or the resumed run's own)"
    return text


def flow_parameters(names: list[str] | None = None) -> list[inspect.Parameter]:
    """The config's settings as typed keyword parameters of a flow: type, choices, bounds, default and description
    come from PipelineConfig, so Prefect's run form shows them and the server refuses out-of-range values. Settings a
    preset may change, those a resumed run keeps, and those whose default depends on the environment, default to None
    ("unset")."""
    params = []
    for name in names or list(PipelineConfig.model_fields):
        field = PipelineConfig.model_fields[name]
        annotation, default = field.annotation, field.default
        unset = name in PRESET_SETTINGS or name in RESUME_OVERRIDES or field.default_factory is not None
        if unset and get_origin(annotation) is Literal:  # "unset" among the choices: the run form shows a dropdown
            annotation = Literal[(*get_args(annotation), None)]  # (a `Literal | None` is a type toggle there)
        typed = Annotated[(annotation, *field.metadata, Field(description=_describe(name)))]
        if unset:
            takes_none = get_origin(annotation) is Literal or type(None) in get_args(annotation)
            typed, default = (typed if takes_none else typed | None), None  # never "None or None": a blank toggle
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=typed))
    return params


def settings_flow(names: list[str] | None = None, *, before: list[inspect.Parameter] = ()):
    """Give a `def f(**settings)` flow function the config's settings as its signature (see flow_parameters), with
    `before` first. Prefect reads the signature for the run form and to validate parameters, and the descriptions
    from the docstring's Args section, which this writes."""

    def wrap(fn):
        params = [*before, *flow_parameters(names)]
        fn.__signature__ = inspect.Signature(params, return_annotation=inspect.signature(fn).return_annotation)
        described = [
            (
                p.name,
                _describe(p.name)
                if p.name in PipelineConfig.model_fields
                else p.annotation.__metadata__[0].description,
            )
            for p in params
        ]
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\nArgs:\n" + "".join(f"    {n}: {d}\n" for n, d in described)
        return fn

    return wrap
