"""One module per paper stage. Each has `main(argv)` (run under `accelerate launch` or plain python) and
`check(argv)` (parse the arguments and validate the inputs, cheaply, before any process is launched).

What they share, one concern a module: `args` (recipe + `--key value` parsing, data arguments), `resume`
(checkpoints), `signals` (SIGTERM), `publish` (recipe file, model card, Hub push), `process` (rank, environment)."""

from hs2trl.runtime.process import configure_environment

configure_environment()
