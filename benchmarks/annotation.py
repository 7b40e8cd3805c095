"""Annotation, responses/s: `score_conversations` (what `hs2 annotate` runs) vs a naive padded loop."""

from __future__ import annotations

import time

from benchmarks.measure import PeakMemory, interleaved, medians


def naive_scores(model, tokenizer, conversations, batch_size: int, device: str):
    """The baseline: rows in file order, padded to the batch max, a plain HF forward under no_grad."""
    import torch

    from hs2trl.data.chat import render

    out = []
    for i in range(0, len(conversations), batch_size):
        texts = [render(tokenizer, c).rstrip() for c in conversations[i : i + batch_size]]
        enc = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(device)
        with torch.no_grad():
            out.append(model(**enc).logits.float().cpu())
    return torch.cat(out)


def timed_scoring_run(kind: str, model, tokenizer, conversations, settings: dict) -> dict:
    import torch

    from hs2trl.rm.scoring import score_conversations

    device = settings["device"]
    with PeakMemory(device) as memory:
        if device == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        if kind == "naive":
            scores = naive_scores(model, tokenizer, conversations, settings["annotate_batch_size"], device)
        else:
            scores = score_conversations(model, tokenizer, conversations, batch_size=settings["annotate_batch_size"])
        if device == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
    return {
        "seconds": round(seconds, 3),
        "responses_per_s": len(conversations) / seconds,
        "responses_per_cpu_s": len(conversations) / max(cpu_seconds, 1e-9),
        "peak_memory_mib": memory.peak_mib,
        "memory_growth_mib": memory.growth_mib,
        "scores": scores,
    }


def run_annotation(base, data, settings, log=print) -> dict:
    from hs2trl.rm.scoring import score_conversations

    model, tok, conversations = base["scorer"], base["tokenizer"], data["conversations"]
    # warm-up, untimed: one small batch through each path
    naive_scores(model, tok, conversations[:2], 2, settings["device"])
    score_conversations(model, tok, conversations[:2], batch_size=2)
    repeats = settings["repeats"]
    runs = interleaved(
        ["naive", "ours"], repeats, lambda kind: timed_scoring_run(kind, model, tok, conversations, settings),
        lambda r, kind, x: (f"bench: annotate repeat {r + 1}/{repeats} {kind:6s} {x['responses_per_s']:7.2f} "
                            f"responses/s peak +{x['memory_growth_mib']:.0f} MiB"), log)
    diff = float((runs["ours"][0]["scores"] - runs["naive"][0]["scores"]).abs().max())
    for results in runs.values():
        for x in results:
            del x["scores"]
    summary = {
        kind: {**medians(results, "responses_per_s", "responses_per_cpu_s", "peak_memory_mib", "memory_growth_mib"),
               "runs": results}
        for kind, results in runs.items()
    }
    padded_naive = sum(len(b) * max(b) for b in (data["annotate_lengths"][i : i + settings["annotate_batch_size"]]
                                                 for i in range(0, len(data["annotate_lengths"]),
                                                                settings["annotate_batch_size"])))
    return {
        "configs": summary,
        "speedup_vs_naive": summary["ours"]["responses_per_s_median"] / summary["naive"]["responses_per_s_median"],
        "speedup_vs_naive_cpu_time": (summary["ours"]["responses_per_cpu_s_median"]
                                      / summary["naive"]["responses_per_cpu_s_median"]),
        "memory_ratio_vs_naive": (summary["ours"]["peak_memory_mib_median"]
                                  / summary["naive"]["peak_memory_mib_median"]),
        "memory_growth_ratio_vs_naive": (summary["ours"]["memory_growth_mib_median"]
                                         / max(summary["naive"]["memory_growth_mib_median"], 1e-9)),
        "max_abs_score_diff_vs_naive": diff,
        "real_tokens": sum(data["annotate_lengths"]),
        "naive_tokens_incl_padding": padded_naive,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }

