"""The Hugging Face Hub: model-folder checks, the model card, pushing folders, and publishing a finished run.

May import: `hs2trl.runtime`, `hs2trl.rm` (to describe a reward model in its card)."""
