# Performance (docs/performance.md). ARGS passes options, e.g. make bench ARGS="--repeats 5".
# OMP_WAIT_POLICY=PASSIVE: on a shared CPU, OpenMP threads that spin-wait make every step many times slower.

bench: install  ## RM training tokens/s vs stock TRL and annotation responses/s vs a naive loop (CPU, ~10 min)
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(PYTHON) scripts/bench.py $(ARGS)

gpu-check:  ## GPU checks (< 5 min on one H100): bf16 RM steps + MFU, ZeRO-3 via the CLI, vs stock TRL; JSON to $OUT (or outputs/gpu_check)
	HF_HUB_OFFLINE=1 $(PYTHON) scripts/gpu_check.py $(ARGS)
