# Reward models (paper §3, Table 3). Append options with ARGS="...", e.g. make rm-llama3-70b ARGS="--push-to-hub".
# Multi-node targets: run the same target on every node with LAUNCH="--machine_rank R --main_process_ip HEAD_IP".
# The recipe's launch: sets processes, machines and accelerate config; LAUNCH adds the node's own part (rank, head).
LAUNCH_ARGS = $(if $(strip $(LAUNCH)),--launcher-args "$(LAUNCH)")
.PHONY: rm-demo rm-demo-2rank rm-llama3-70b rm-nemotron4-340b rm-baseline-hh-rlhf rm-baseline-open-assistant \
	rm-baseline-helpsteer rm-llama3.1-70b-helpfulness rm-llama3.1-70b-scaled-bt rm-llama3.1-70b-expo \
	rm-demo-preference rm-demo-helpfulness rm-demo-scaled-bt rm-demo-expo

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

# HelpSteer2-Preference (arXiv 2410.01257): regression on helpfulness, then scaled Bradley-Terry from it, then ExPO.
# The candidates of the ExPO step: chosen here (docs/use.md, "Targets a full run must reproduce").
EXPO_ALPHAS ?= 0.1,0.3,0.5,1,2

rm-llama3.1-70b-helpfulness:  ## HelpSteer2-Preference stage 1: helpfulness-only regression RM, Llama 3.1 70B Instruct (4x8 H100)
	$(HS2) train-rm --config llama3.1-70b/rm-helpfulness $(LAUNCH_ARGS) $(ARGS)

rm-llama3.1-70b-scaled-bt:  ## HelpSteer2-Preference stage 2: scaled Bradley-Terry from the stage 1 RM with its head (4x8 H100)
	$(HS2) train-rm --config llama3.1-70b/rm-scaled-bt $(LAUNCH_ARGS) $(ARGS)

rm-llama3.1-70b-expo:  ## ExPO of the scaled-BT RM from the stage 1 RM, alpha by HelpSteer2-Preference validation accuracy (8 H100)
	$(HS2) expo --base outputs/llama3.1-70b-rm-helpfulness --model outputs/llama3.1-70b-rm-scaled-bt --alphas $(EXPO_ALPHAS) --eval-dataset nvidia/HelpSteer2:preference --eval-split validation --dtype bfloat16 --device-map auto --output outputs/llama3.1-70b-rm-scaled-bt-expo $(ARGS)

# The CPU demo of the same chain. Its preference strengths are DERIVED from the demo set's helpfulness differences,
# clip(helpfulness_2 - helpfulness_1, -3, 3), not annotated (demo:helpsteer2-preference, hs2trl/data/demo.py).
# ARGS reach every step; REWARDBENCH2=FILE scores a local RewardBench 2 copy instead of the Hub's.
rm-demo-preference:  ## demo on CPU: helpfulness RM -> scaled BT (derived strengths) -> ExPO -> RewardBench 2 (~10 min)
	@echo "hs2: demo:helpsteer2-preference: preference strengths DERIVED from the demo set's helpfulness differences, clip(helpfulness_2 - helpfulness_1, -3, 3); not annotated"
	$(MAKE) --no-print-directory rm-demo-helpfulness
	$(MAKE) --no-print-directory rm-demo-scaled-bt
	$(MAKE) --no-print-directory rm-demo-expo
	$(MAKE) --no-print-directory eval-rm-demo-preference-rewardbench2

rm-demo-helpfulness:  ## demo stage 1 on CPU: helpfulness-only regression RM (SmolLM2-135M, demo data)
	$(HS2) train-rm --config demo/rm-helpfulness $(ARGS)

rm-demo-scaled-bt:  ## demo stage 2 on CPU: scaled BT from the demo helpfulness RM, on derived strengths
	$(HS2) train-rm --config demo/rm-scaled-bt $(ARGS)

rm-demo-expo:  ## demo ExPO on CPU: alpha by accuracy on the demo validation pairs (derived strengths)
	$(HS2) expo --base outputs/demo-rm-helpfulness --model outputs/demo-rm-scaled-bt --alphas $(EXPO_ALPHAS) --eval-dataset demo:helpsteer2-preference --eval-split validation --output outputs/demo-rm-scaled-bt-expo --overwrite $(ARGS)
