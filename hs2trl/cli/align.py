"""Commands registered on the hs2 app (see cli/app.py). Filled in by its owner."""

from .app import app, data_app  # noqa: F401
