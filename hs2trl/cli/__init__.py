"""`hs2`: one command per paper stage. Each builds a stage command line and runs it under `accelerate launch`."""

from __future__ import annotations

# Import order is the order of `hs2 --help`: the reward model, using it, aligning with it, evaluating the aligned
# models, then operations.
from hs2trl.cli import align, evaluate, ops, rm, steer, use  # noqa: F401,I001  (each module registers its commands)
from hs2trl.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
