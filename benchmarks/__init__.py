"""hs2trl's benchmarks, run from the repository root: `python -m benchmarks.bench` (`make bench`) and
`python -m benchmarks.gpu_check` (`make gpu-check`). docs/performance.md reports and explains the figures."""

import os

# Before torch loads (this runs before any module of the package): OpenMP threads that spin while waiting turn every
# parallel region into a scheduler wait when another process holds a core (measured here: a 128-token step 25x
# slower). Passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
