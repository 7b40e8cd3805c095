"""The reward model: attributes, loading (one loader, one head finder), scoring, folding the heads into one reward,
export, annotation, RewardBench and the RM as TRL reward functions for online RL.

May import: `hs2trl.runtime`, `hs2trl.data`, `hs2trl.packing`, `hs2trl.trl_internals`."""
