"""Old import path, kept for users: `hs2trl.rewards` is now `hs2trl.rm.rewards` (the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("hs2trl.rm.rewards")
