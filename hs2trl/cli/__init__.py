"""`hs2`: one command per paper stage. Each builds a stage command line and runs it under `accelerate launch`."""

from __future__ import annotations

from . import align, ops, rm, steer, use  # noqa: F401  (each module registers its commands)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
