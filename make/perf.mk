# Performance (docs/performance.md): the benchmarks/ package, run from the repository root. ARGS passes options,
# e.g. make bench ARGS="--repeats 5", make gpu-check ARGS=--smoke.
# OMP_WAIT_POLICY=PASSIVE: on a shared CPU, OpenMP threads that spin-wait make every step many times slower.

bench: install  ## python -m benchmarks.bench: RM training vs stock TRL (+ ours in bf16), annotation vs a naive loop, SteerLM 2.0 packed vs padded, the online RL reward step vs TRL's, hs2 serve-rm vs offline scoring (CPU, ~20 min)
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m benchmarks.bench $(ARGS)

gpu-check:  ## python -m benchmarks.gpu_check (< 8 min on one H100/H200): 1B Llama RM vs stock TRL + MFU, SteerLM 2.0 layouts, ZeRO-3 and hs2 rloo via the CLI, hs2 serve-rm under 32 clients; JSON to $OUT (or outputs/gpu_check); ARGS=--smoke: its logic on a CPU
	HF_HUB_OFFLINE=1 $(PYTHON) -m benchmarks.gpu_check $(ARGS)
