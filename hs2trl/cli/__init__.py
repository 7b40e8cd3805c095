"""`hs2`: one command per paper stage. Each builds a stage command line and runs it under `accelerate launch`."""

from __future__ import annotations

from .app import app
from . import rm  # noqa: F401  (registers the commands)


def main() -> None:
    app()


__all__ = ["app", "main"]
