"""Allowed values of a dataclass field live in its `metadata["choices"]`, and are checked here, the one way.

argparse checks command-line values against `choices`, but a recipe's values become parser defaults, which argparse
never checks, and a config built in Python passes no parser at all: `check_choices` covers both."""

from __future__ import annotations

from dataclasses import fields

from hs2trl.runtime.errors import Hs2Error


def check_choices(obj, where_: str | None = None) -> None:
    """One line for the first field whose value is not among its choices (None is always allowed)."""
    for f in fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name, None)
        if choices and value is not None and value not in choices:
            prefix = f"{where_}: " if where_ else ""
            raise Hs2Error(f"{prefix}{f.name}: '{value}' is not one of {', '.join(map(str, choices))}")
