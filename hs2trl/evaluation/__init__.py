"""Evaluation of aligned models as the paper's Table 4: MT Bench, TruthfulQA MC2, AlpacaEval 2.0 LC, Arena Hard, the
reward benchmark, and the report. `runner` drives them; one module per benchmark.

May import: `hs2trl.rm`, `hs2trl.steer`, `hs2trl.hub`, `hs2trl.runtime`, `hs2trl.data`."""
