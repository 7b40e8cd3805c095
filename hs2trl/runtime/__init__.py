"""How a run runs: errors, launch (accelerate, nodes), locks and output folders, recipes, the process and its signals,
checkpoint resume, hardware defaults, argument parsing, the resumable pass, the rounds driver and model loading.

May import: `hs2trl.data` only for reading rows; nothing from `rm`, `steer`, `stages` or `cli`."""
