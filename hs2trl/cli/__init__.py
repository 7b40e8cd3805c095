"""`hs2`: one command per paper stage. Each builds a stage command line and runs it under `accelerate launch`."""

from __future__ import annotations

# Import order is the order of `hs2 --help`: the reward model, using it, aligning with it, evaluating the aligned
# models, then operations.
from . import rm, use, align, steer, evaluate, ops  # noqa: F401,I001  (each module registers its commands)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
