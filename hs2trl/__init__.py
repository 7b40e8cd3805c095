"""hs2trl: the HelpSteer2 paper (arXiv 2406.08673) as a thin extension layer on Hugging Face TRL."""

from hs2trl.rm.attributes import ATTRIBUTES, WEIGHT_PRESETS, resolve_weights

__version__ = "0.1.0"
__all__ = ["ATTRIBUTES", "WEIGHT_PRESETS", "resolve_weights", "__version__"]
