"""The reward model: how hs2trl reads, folds and hands out a SteerLM RM's predictions.

`reward_function.SteerLMReward`: the RM as TRL reward functions for the online RL trainers (RLOO, GRPO).
"""
