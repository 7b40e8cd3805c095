# Reward models (paper §3, Table 3). Append options with ARGS="...", e.g. make rm-llama3-70b ARGS="--push-to-hub".
# Multi-node targets: run the same target on every node with LAUNCH="--machine_rank R --main_process_ip HEAD_IP".
# The recipe's launch: sets processes, machines and accelerate config; LAUNCH adds the node's own part (rank, head).
LAUNCH_ARGS = $(if $(strip $(LAUNCH)),--launcher-args "$(LAUNCH)")
.PHONY: rm-demo rm-demo-2rank rm-llama3-70b rm-nemotron4-340b rm-baseline-hh-rlhf rm-baseline-open-assistant rm-baseline-helpsteer

rm-demo:  ## demo SteerLM RM on CPU (SmolLM2-135M, built-in sample)
	$(HS2) train-rm --config demo/rm $(ARGS)

rm-demo-2rank:  ## the demo RM as a 2-rank CPU data-parallel run
	$(HS2) train-rm --config demo/rm --num-processes 2 $(ARGS)

rm-llama3-70b:  ## Llama 3 70B SteerLM RM on HelpSteer2 (4 nodes x 8 H100, ZeRO-3)
	$(HS2) train-rm --config llama3-70b/rm $(LAUNCH_ARGS) $(ARGS)

rm-nemotron4-340b:  ## Nemotron-4 340B SteerLM RM on HelpSteer2 (16 nodes x 8 H100, ZeRO-3)
	$(HS2) train-rm --config nemotron4-340b/rm $(LAUNCH_ARGS) $(ARGS)

rm-baseline-hh-rlhf:  ## Table 3 baseline: Bradley-Terry RM on HH-RLHF
	$(HS2) train-rm --config llama3-70b/rm-hh-rlhf $(LAUNCH_ARGS) $(ARGS)

rm-baseline-open-assistant:  ## Table 3 baseline: regression RM on Open Assistant attributes
	$(HS2) train-rm --config llama3-70b/rm-open-assistant $(LAUNCH_ARGS) $(ARGS)

rm-baseline-helpsteer:  ## Table 3 baseline: regression RM on HelpSteer (v1)
	$(HS2) train-rm --config llama3-70b/rm-helpsteer1 $(LAUNCH_ARGS) $(ARGS)
