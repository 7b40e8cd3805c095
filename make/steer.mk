# SteerLM and SteerLM 2.0 (paper §4.5). Append options with ARGS="...", e.g. make steerlm2-llama3-70b ARGS="--resume".
# Multi-node targets: run the same target on every node with LAUNCH="--machine_rank R --main_process_ip HEAD_IP".
# The recipe's launch: sets processes, machines and accelerate config; LAUNCH adds the node's own part (rank, head).
LAUNCH_ARGS = $(if $(strip $(LAUNCH)),--launcher-args "$(LAUNCH)")
.PHONY: steerlm-demo steerlm2-demo steerlm-llama3-70b steerlm2-llama3-70b

steerlm-demo:  ## demo SteerLM on CPU (needs the demo RM: make rm-demo)
	$(HS2) steerlm --config demo/steerlm $(ARGS)

steerlm2-demo:  ## demo SteerLM 2.0 on CPU, 2 iterations (needs make rm-demo steerlm-demo)
	$(HS2) steerlm2 --config demo/steerlm2 $(ARGS)

steerlm-llama3-70b:  ## Llama 3 70B SteerLM: annotate Daring Anteater with the RM, conditioned SFT (4 nodes x 8 H100, ZeRO-3)
	$(HS2) steerlm --config llama3-70b/steerlm $(LAUNCH_ARGS) $(ARGS)

steerlm2-llama3-70b:  ## Llama 3 70B SteerLM 2.0, 2 iterations of n=10 sampling + training (4 nodes x 8 H100, ZeRO-3)
	$(HS2) steerlm2 --config llama3-70b/steerlm2 $(LAUNCH_ARGS) $(ARGS)
