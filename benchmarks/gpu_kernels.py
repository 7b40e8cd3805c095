"""GPU checks of the device and its attention kernels: packed layouts must give the padded layout's numbers."""

from __future__ import annotations

from benchmarks.gpu_llama1b import TINY_LLAMA
from benchmarks.measure import default_device, free_gpu


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "liger-kernel", "flash-attn",
                 "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def check_environment(ctx) -> dict:
    import torch

    from hs2trl.packing import packed_kernel

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    return {
        "status": "pass",
        "gpu": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "versions": _versions(),
        "packed_kernel_bf16": packed_kernel("cuda", torch.bfloat16),
        "packed_kernel_fp32": packed_kernel("cuda", torch.float32),
        "model": ctx["model_dir"],
        "pretrained_weights": ctx["pretrained"],
    }


def check_packed_equivalence(ctx) -> dict:
    import torch

    from hs2trl.packing import pack_sequences, packed_attention, pad_sequences
    from hs2trl.rm.head import end_logits
    from hs2trl.rm.modeling import init_reward_model
    from hs2trl.runtime.models import load_tokenizer

    tok = load_tokenizer(ctx["model_dir"])
    out = {}
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(20, 700, (8,), generator=g)]
    sequences = [torch.randint(10, 40000, (n,), generator=g) for n in lengths]
    ok = True
    for dtype, tol in ((torch.bfloat16, 0.05), (torch.float32, 1e-3)):
        torch.manual_seed(0)
        model = init_reward_model(ctx["model_dir"], tok, dtype=dtype).cuda().eval()
        with torch.no_grad():
            padded = end_logits(model, {k: v.cuda() for k, v in pad_sequences(sequences, tok.pad_token_id).items()})
            with packed_attention(model):
                batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in pack_sequences(sequences).items()}
                packed = end_logits(model, batch)
        diff = float((padded.float() - packed.float()).abs().max())
        scale = float(padded.float().abs().max())
        out[str(dtype).removeprefix("torch.")] = {"max_abs_diff": diff, "max_abs_logit": scale,
                                                  "tolerance": tol * max(scale, 1)}
        ok &= diff <= tol * max(scale, 1)
        del model
        torch.cuda.empty_cache()
    out["status"] = "pass" if ok else "fail"
    out["lengths"] = lengths
    return out


def check_flash_attention_2(ctx) -> dict:
    import importlib.util

    import torch

    from hs2trl.packing import pack_sequences, packed_attention, pad_sequences
    from hs2trl.rm.head import end_logits
    from hs2trl.rm.modeling import init_reward_model
    from hs2trl.runtime.models import load_tokenizer

    if importlib.util.find_spec("flash_attn") is None:
        return {"status": "skip", "reason": "flash-attn not installed (padding-free uses torch's varlen kernel)"}
    tok = load_tokenizer(ctx["model_dir"])
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(10, 40000, (int(n),), generator=g) for n in torch.randint(20, 700, (8,), generator=g)]
    torch.manual_seed(0)
    fa2 = init_reward_model(ctx["model_dir"], tok, dtype=torch.bfloat16,
                            attn_implementation="flash_attention_2").cuda().eval()
    with torch.no_grad(), packed_attention(fa2) as ok:
        packed = end_logits(fa2, {k: v.cuda() if torch.is_tensor(v) else v
                                  for k, v in pack_sequences(sequences).items()})
        padded = end_logits(fa2, {k: v.cuda() for k, v in pad_sequences(sequences, tok.pad_token_id).items()})
    diff = float((packed.float() - padded.float()).abs().max())
    return {"status": "pass" if ok and diff <= 0.05 * max(1.0, float(padded.abs().max())) else "fail",
            "max_abs_diff": diff, "native_varlen": ok}


def check_steerlm2_equivalence(ctx) -> dict:
    """Summed response log-probs in the three layouts on the device, fp32 and bf16: the shared-prompt row runs the
    varlen kernel with more keys than queries (its causal mask must be aligned bottom-right)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from hs2trl.packing import packed_attention, packed_kernel
    from hs2trl.steer.groups import LAYOUTS, collate_groups
    from hs2trl.steer.objective import batch_response_logps

    device, smoke = default_device(), ctx["args"].smoke
    config = LlamaConfig(**TINY_LLAMA) if smoke else AutoConfig.from_pretrained(ctx["model_dir"])
    g = torch.Generator().manual_seed(0)
    scale = 10 if smoke else 1

    def ids(n):
        return torch.randint(10, 40000, (n,), generator=g).tolist()

    groups = [(ids(int(p)), [ids(int(r)) for r in torch.randint(1, 400 // scale, (4,), generator=g)])
              for p in torch.randint(20 // scale, 600 // scale, (4,), generator=g)]
    out, ok = {"kernel_bf16": packed_kernel(device, torch.bfloat16)}, True
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
        values = {}
        for layout in LAYOUTS:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_groups(
                groups, layout, config.pad_token_id or 0).items()}
            with torch.no_grad(), packed_attention(model, shared_prefix=layout == "shared_prompt"):
                values[layout] = batch_response_logps(model, batch).float().cpu()
        ref = values["padded"]
        diffs = {k: float(((v - ref).abs() / ref.abs().clamp(min=1)).max())
                 for k, v in values.items() if k != "padded"}
        out[str(dtype).removeprefix("torch.")] = {"max_rel_diff_vs_padded": diffs, "tolerance": tol,
                                                  "padded_logps": ref.tolist()[:4]}
        ok &= all(d <= tol for d in diffs.values())
        del model
        free_gpu()
    print(f"gpu-check: SteerLM 2.0 layouts vs padded: fp32 {out['float32']['max_rel_diff_vs_padded']}, "
          f"bf16 {out['bfloat16']['max_rel_diff_vs_padded']} ({out['kernel_bf16']})", flush=True)
    worst = {k: max(out[k]["max_rel_diff_vs_padded"].values()) for k in ("float32", "bfloat16")}
    summary = f"max rel. diff vs padded: fp32 {worst['float32']:.1e}, bf16 {worst['bfloat16']:.1e}"
    return {"status": "pass" if ok else "fail", "summary": summary, **out}
