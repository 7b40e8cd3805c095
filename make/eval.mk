# Evaluating aligned models (paper §4.1, Table 4) with `hs2 eval-policy`. Append options with ARGS="...".
# Benchmark files come from their public sources, or from a local copy: EVAL_DATA=DIR (layout in docs/evaluate.md).
# The judged figures read the judge's key from $OPENAI_API_KEY; the 70B targets run on one node of 8 H100.
# All 70B targets share outputs/table4: each evaluates one model; `make table4` evaluates them all, reusing every
# answer and judgment already there, and writes the whole table.
EVAL_DATA ?=
EVAL_DATA_ARG = $(if $(EVAL_DATA),--data-dir $(EVAL_DATA),)
EVAL_70B = $(HS2) eval-policy --config llama3-70b/eval-policy $(EVAL_DATA_ARG)

.PHONY: eval-policy-demo table4 eval-policy-llama3-70b-instruct eval-policy-llama3-70b-sft \
	eval-policy-llama3-70b-sft-open-assistant eval-policy-llama3-70b-dpo eval-policy-llama3-70b-iterative-dpo \
	eval-policy-llama3-70b-ppo eval-policy-llama3-70b-steerlm eval-policy-llama3-70b-steerlm2 \
	eval-policy-llama3.1-70b-reinforce eval-policy-demo-rloo

eval-policy-demo:  ## demo evaluation on CPU: RM reward + win rate, TruthfulQA MC2, MT Bench lengths (needs make demo align-demo-dpo)
	$(HS2) eval-policy --config demo/eval-policy $(EVAL_DATA_ARG) $(ARGS)

table4:  ## Table 4: every aligned 70B model on MT Bench, length, TruthfulQA MC2, AlpacaEval 2.0 LC, Arena Hard (8 H100)
	$(EVAL_70B) $(ARGS)

eval-policy-llama3-70b-instruct:  ## Table 4 row: Llama 3 70B Instruct (the paper's reference row)
	$(EVAL_70B) --model meta-llama/Meta-Llama-3-70B-Instruct $(ARGS)

eval-policy-llama3-70b-sft:  ## Table 4 row: SFT on Daring Anteater
	$(EVAL_70B) --model outputs/llama3-70b-sft-daring-anteater $(ARGS)

eval-policy-llama3-70b-sft-open-assistant:  ## Table 4 row: SFT on Open Assistant
	$(EVAL_70B) --model outputs/llama3-70b-sft-open-assistant $(ARGS)

eval-policy-llama3-70b-dpo:  ## Table 4 row: DPO on HelpSteer2
	$(EVAL_70B) --model outputs/llama3-70b-dpo $(ARGS)

eval-policy-llama3-70b-iterative-dpo:  ## Table 4 row: iterative DPO on Daring Anteater prompts
	$(EVAL_70B) --model outputs/llama3-70b-iterative-dpo/round-1/model $(ARGS)

eval-policy-llama3-70b-ppo:  ## Table 4 row: PPO on HelpSteer2 prompts
	$(EVAL_70B) --model outputs/llama3-70b-ppo $(ARGS)

eval-policy-llama3-70b-steerlm:  ## Table 4 row: SteerLM on Daring Anteater (asked with 4,4,4,2,2)
	$(EVAL_70B) --model outputs/llama3-70b-steerlm $(ARGS)

eval-policy-llama3-70b-steerlm2:  ## Table 4 row: SteerLM 2.0 iteration 2 (asked with 4,4,4,2,2)
	$(EVAL_70B) --model outputs/llama3-70b-steerlm2/iteration-1/model $(ARGS)

eval-policy-llama3.1-70b-reinforce:  ## HelpSteer2-Preference row: the REINFORCE model of make rloo-llama3.1-70b
	$(EVAL_70B) --model outputs/llama3.1-70b-reinforce $(ARGS)

eval-policy-demo-rloo:  ## the demo RLOO policy vs its start: the demo RM's goodness, win rate, answer length (CPU)
	$(HS2) eval-policy --config demo/eval-policy --model outputs/demo-rloo --benchmarks reward --limit 40 --output-dir outputs/eval-policy-demo-rloo $(ARGS)
