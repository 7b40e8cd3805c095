# Using reward models (paper §3.2 / Table 3 RewardBench, Table 2 statistics, §4.3 PPO normalisation, §4.5 SteerLM
# annotation). Append options with ARGS="...", e.g. make eval-rm-demo ARGS="--dataset rewardbench_filtered.jsonl".
# The 70B targets read the RM of `make rm-llama3-70b` and run on one node of 8 H100 (--device-map auto splits the
# model over the GPUs); the 340B one needs more memory than 8 x 80 GB in bf16 (device_map offloads the rest to CPU).
.PHONY: eval-rm-llama3-70b eval-rm-nemotron4-340b eval-rm-baseline-hh-rlhf eval-rm-baseline-open-assistant \
	eval-rm-baseline-helpsteer export-rm-llama3-70b rm-normalize-llama3-70b annotate-daring-anteater-llama3-70b \
	stats-helpsteer2 eval-rm-demo export-rm-demo annotate-demo stats-demo eval-rm-llama3.1-70b-helpfulness \
	eval-rm-llama3.1-70b-scaled-bt eval-rm-llama3.1-70b-expo eval-rm-llama3.1-70b-expo-rewardbench2 \
	stats-helpsteer2-preference eval-rm-demo-preference eval-rm-demo-preference-rewardbench2 stats-demo-preference \
	serve-rm-demo serve-rm-llama3-70b
# RewardBench 2 data: the Hub's (split test), or REWARDBENCH2=FILE for a local copy.
REWARDBENCH2 ?= allenai/reward-bench-2

eval-rm-llama3-70b:  ## RewardBench of the Llama 3 70B SteerLM RM, weights [0.65, 0.8, 0.45, 0.55, -0.4] (8 H100)
	$(HS2) eval-rm --model outputs/llama3-70b-steerlm-rm --weights rewardbench-llama3-70b --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3-70b $(ARGS)

eval-rm-nemotron4-340b:  ## RewardBench of the Nemotron-4 340B SteerLM RM, weights [0.3, 0.74, 0.46, 0.47, -0.33]
	$(HS2) eval-rm --model outputs/nemotron4-340b-steerlm-rm --weights rewardbench-nemotron4-340b --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/nemotron4-340b $(ARGS)

eval-rm-baseline-hh-rlhf:  ## Table 3: RewardBench of the Bradley-Terry HH-RLHF RM (1 output, scored directly)
	$(HS2) eval-rm --model outputs/llama3-70b-rm-hh-rlhf --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3-70b-hh-rlhf $(ARGS)

eval-rm-baseline-open-assistant:  ## Table 3: RewardBench of the Open Assistant RM (reward = its quality head)
	$(HS2) eval-rm --model outputs/llama3-70b-rm-open-assistant --weights 1,0,0,0 --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3-70b-open-assistant $(ARGS)

eval-rm-baseline-helpsteer:  ## Table 3: RewardBench of the HelpSteer (v1) RM, weights as the HelpSteer2 70B RM
	$(HS2) eval-rm --model outputs/llama3-70b-rm-helpsteer1 --weights rewardbench-llama3-70b --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3-70b-helpsteer1 $(ARGS)

export-rm-llama3-70b:  ## the 70B RM as a 1-output goodness model (stock TRL trainers, RewardBench's tool, pipelines)
	$(HS2) export-rm --model outputs/llama3-70b-steerlm-rm --weights goodness --output outputs/llama3-70b-steerlm-rm-goodness $(ARGS)

rm-normalize-llama3-70b:  ## §4.3: mean/std of the 70B RM's goodness over HelpSteer2 train, stored for PPO
	$(HS2) rm-normalize --model outputs/llama3-70b-steerlm-rm --dataset nvidia/HelpSteer2 --split train --weights goodness $(ARGS)

annotate-daring-anteater-llama3-70b:  ## §4.5: SteerLM labels for Daring Anteater from the 70B RM (resumable, 8 H100)
	$(HS2) annotate --model outputs/llama3-70b-steerlm-rm --dataset nvidia/Daring-Anteater --output outputs/daring-anteater-annotated.jsonl --dtype bfloat16 --device-map auto $(ARGS)

stats-helpsteer2:  ## Table 2: HelpSteer2 train statistics (mean, std, Pearson r with helpfulness) and heat-map
	$(HS2) data stats --dataset nvidia/HelpSteer2 --split train --plot outputs/stats/helpsteer2-train.png $(ARGS)

eval-rm-demo:  ## RewardBench of the demo RM on CPU (needs make rm-demo; ~10-20 min on 2 cores)
	$(HS2) eval-rm --model outputs/demo-rm --weights rewardbench-llama3-70b --output-dir outputs/eval-rm/demo $(ARGS)

export-rm-demo:  ## the demo RM as a 1-output goodness model (needs make rm-demo)
	$(HS2) export-rm --model outputs/demo-rm --weights goodness --output outputs/demo-rm-goodness $(ARGS)

annotate-demo:  ## annotate the demo HelpSteer2 validation split with the demo RM (needs make rm-demo)
	$(HS2) annotate --model outputs/demo-rm --dataset demo:helpsteer2 --split validation --output outputs/demo-annotated.jsonl $(ARGS)

stats-demo:  ## Table 2 for the built-in demo data
	$(HS2) data stats --dataset demo:helpsteer2 --plot outputs/stats/demo-helpsteer2.png $(ARGS)

# HelpSteer2-Preference's RMs (make rm-llama3.1-70b-*): each is 1 output, scored directly (no --weights).
eval-rm-llama3.1-70b-helpfulness:  ## RewardBench of the helpfulness-only regression RM (paper 93.0; 8 H100)
	$(HS2) eval-rm --model outputs/llama3.1-70b-rm-helpfulness --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3.1-70b-helpfulness $(ARGS)

eval-rm-llama3.1-70b-scaled-bt:  ## RewardBench of the scaled-BT RM from the helpfulness RM (paper 93.7; 8 H100)
	$(HS2) eval-rm --model outputs/llama3.1-70b-rm-scaled-bt --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3.1-70b-scaled-bt $(ARGS)

eval-rm-llama3.1-70b-expo:  ## RewardBench of the scaled-BT RM after ExPO (paper 94.1; 8 H100)
	$(HS2) eval-rm --model outputs/llama3.1-70b-rm-scaled-bt-expo --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3.1-70b-scaled-bt-expo $(ARGS)

eval-rm-llama3.1-70b-expo-rewardbench2:  ## RewardBench 2 of the scaled-BT RM after ExPO (8 H100)
	$(HS2) eval-rm --benchmark rewardbench2 --dataset $(REWARDBENCH2) --model outputs/llama3.1-70b-rm-scaled-bt-expo --dtype bfloat16 --device-map auto --output-dir outputs/eval-rm/llama3.1-70b-scaled-bt-expo-rewardbench2 $(ARGS)

stats-helpsteer2-preference:  ## HelpSteer2-Preference train: preference strength histogram, pairs and ties
	$(HS2) data stats --dataset nvidia/HelpSteer2:preference --split train $(ARGS)

eval-rm-demo-preference:  ## RewardBench, first 5 pairs per subset, of the demo ExPO RM (needs make rm-demo-preference)
	$(HS2) eval-rm --model outputs/demo-rm-scaled-bt-expo --per-subset 5 --output-dir outputs/eval-rm/demo-scaled-bt-expo $(ARGS)

eval-rm-demo-preference-rewardbench2:  ## RewardBench 2, first 5 prompts per subset, of the demo ExPO RM (CPU)
	$(HS2) eval-rm --benchmark rewardbench2 --dataset $(REWARDBENCH2) --model outputs/demo-rm-scaled-bt-expo --per-subset 5 --output-dir outputs/eval-rm/demo-scaled-bt-expo-rewardbench2 $(ARGS)

stats-demo-preference:  ## demo:helpsteer2-preference train: the strengths derived from helpfulness, and the ties
	$(HS2) data stats --dataset demo:helpsteer2-preference --split train $(ARGS)

# The RM as a server (docs/use.md "Serving the RM"): policy runs on other nodes pass --reward-url http://HOST:PORT.
serve-rm-demo:  ## serve the demo RM on http://127.0.0.1:8000 (loopback, no key; needs make rm-demo; Ctrl-C stops it)
	$(HS2) serve-rm --model outputs/demo-rm --port 8000 $(ARGS)

serve-rm-llama3-70b:  ## serve the 70B SteerLM RM to other nodes (needs HS2_RM_API_KEY; bf16 over 8 H100)
	$(HS2) serve-rm --model outputs/llama3-70b-steerlm-rm --dtype bfloat16 --device-map auto --host 0.0.0.0 --port 8000 $(ARGS)
