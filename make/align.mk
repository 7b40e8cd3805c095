# Alignment (paper §4): SFT, DPO, iterative DPO, PPO; online RL with the RM (HelpSteer2-Preference): RLOO, GRPO.
# Append options with ARGS="...", e.g. ARGS="--push-to-hub". PPO needs TRL 1.12 (pip install 'hs2trl[ppo]').
# The 70B targets run on 8 nodes x 8 H100 (DeepSpeed ZeRO-3): run the same target on every node with
#   LAUNCH="--machine_rank R --main_process_ip HEAD_IP"   (R = 0..7; node 0 is the head)
# Iterative DPO runs on one node of 8 H100 (its recipe says why). Demo targets run on CPU; the iterative-DPO and PPO
# demos read the demo reward model (`make demo` first).
# The recipe's launch: sets processes, machines and accelerate config; LAUNCH adds the node's own part (rank, head).
LAUNCH_ARGS = $(if $(strip $(LAUNCH)),--launcher-args "$(LAUNCH)")
.PHONY: sft-daring-anteater sft-open-assistant dpo-llama3-70b iterative-dpo-llama3-70b ppo-llama3-70b \
	align-demo-sft align-demo-dpo align-demo-dpo-2rank align-demo-iterative-dpo align-demo-ppo \
	rloo-llama3.1-70b align-demo-rloo align-demo-grpo

sft-daring-anteater:  ## SFT Llama 3 70B base on Daring Anteater (1,600 steps, GBS 384; 8x8 H100)
	$(HS2) sft --config llama3-70b/sft-daring-anteater $(LAUNCH_ARGS) $(ARGS)

sft-open-assistant:  ## SFT Llama 3 70B base on Open Assistant (2,400 steps, GBS 128; 8x8 H100)
	$(HS2) sft --config llama3-70b/sft-open-assistant $(LAUNCH_ARGS) $(ARGS)

dpo-llama3-70b:  ## DPO on HelpSteer2 pairs (7,221) from the Daring Anteater SFT model (8x8 H100)
	$(HS2) dpo --config llama3-70b/dpo $(LAUNCH_ARGS) $(ARGS)

iterative-dpo-llama3-70b:  ## iterative DPO from the DPO model: 20k prompts x 10 samples, goodness (1 node, 8 H100)
	$(HS2) dpo --iterative --config llama3-70b/iterative-dpo $(ARGS)

ppo-llama3-70b:  ## PPO from the SFT model, reward = normalised goodness (8x8 H100)
	$(HS2) ppo --config llama3-70b/ppo $(LAUNCH_ARGS) $(ARGS)

align-demo-sft:  ## demo SFT on CPU (SmolLM2-135M, helpful demo responses)
	$(HS2) sft --config demo/sft $(ARGS)

align-demo-dpo:  ## demo DPO on CPU (demo HelpSteer2 pairs)
	$(HS2) dpo --config demo/dpo $(ARGS)

align-demo-dpo-2rank:  ## the demo DPO as a 2-rank CPU data-parallel run
	$(HS2) dpo --config demo/dpo --num-processes 2 $(ARGS)

align-demo-iterative-dpo:  ## demo iterative DPO on CPU (2 rounds; needs outputs/demo-rm)
	$(HS2) dpo --iterative --config demo/iterative-dpo $(ARGS)

align-demo-ppo:  ## demo PPO on CPU (needs outputs/demo-rm)
	$(HS2) ppo --config demo/ppo $(ARGS)

rloo-llama3.1-70b:  ## HelpSteer2-Preference REINFORCE (RLOO) from Llama-3.1-70B-Instruct, KL 0.01, 4 rollouts (8x8 H100)
	$(HS2) rloo --config llama3.1-70b/reinforce $(LAUNCH_ARGS) $(ARGS)

align-demo-rloo:  ## demo RLOO on CPU, reward = the demo RM's goodness (needs outputs/demo-rm)
	$(HS2) rloo --config demo/rloo $(ARGS)

align-demo-grpo:  ## demo GRPO on CPU, reward = the demo RM's goodness (needs outputs/demo-rm)
	$(HS2) grpo --config demo/grpo $(ARGS)
