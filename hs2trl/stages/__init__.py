"""One module per paper stage. Each has `main(argv)` (run under `accelerate launch` or plain python) and
`check(argv)` (parse the arguments and validate the inputs, cheaply, before any process is launched)."""
