"""Old import path, kept for users: `hs2trl.steering` is now `hs2trl.steer.steering` (the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("hs2trl.steer.steering")
