"""Using a reward model: annotate, export-rm, eval-rm, serve-rm, rm-normalize, and `hs2 data stats` / `to-pairs`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from hs2trl.cli.app import (
    PASSTHROUGH,
    AccelerateConfig,
    Dataset,
    DryRun,
    LauncherArgs,
    Model,
    NumProcesses,
    RewardKeyEnv,
    RewardUrl,
    app,
    data_app,
    launch_stage,
)
from hs2trl.runtime.errors import Hs2Error, exit_on_user_error
from hs2trl.runtime.locks import output_lock

WEIGHTS_HELP = ("goodness, rewardbench-llama3-70b, rewardbench-nemotron4-340b, or one number per model output "
                "('a,b,c,d,e' for a 5-attribute RM)")
Weights = Annotated[str | None, typer.Option("--weights", "-w", help=WEIGHTS_HELP + ".")]
Split = Annotated[str, typer.Option("--split", help="Split of a Hub or demo dataset.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")]
MaxLength = Annotated[int | None, typer.Option(
    "--max-length", help="Truncate longer conversations from the left (counted).")]
MaxRows = Annotated[int | None, typer.Option("--max-rows", help="Use only the first N rows.")]
Dtype = Annotated[str, typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")]
DeviceMap = Annotated[str | None, typer.Option(
    "--device-map", help="'auto': split one model over all GPUs (for RMs too big for one).")]
Preview = Annotated[bool, typer.Option("--dry-run", help="Print what would be done and exit.")]


def _preview(dry_run: bool, what: str) -> bool:
    if dry_run:
        print(f"hs2: dry run: {what}", flush=True)
    return dry_run


def _required(value, flag: str, command: str):
    if value in (None, ""):
        raise Hs2Error(f"{command}: {flag} is required")
    return value


@app.command("annotate", context_settings=PASSTHROUGH)
def annotate(
    ctx: typer.Context,
    model: Model = None,
    dataset: Dataset = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Output .jsonl (resumable) or .parquet.")] = None,
    reward_url: RewardUrl = None,
    reward_api_key_env: RewardKeyEnv = None,
    split: Split = "train",
    weights: Weights = None,
    batch_size: BatchSize = 16,
    max_length: MaxLength = None,
    max_rows: MaxRows = None,
    dtype: Dtype = "float32",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start again instead of resuming the output.")] = False,
    device_map: DeviceMap = None,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    dry_run: DryRun = False,
) -> None:
    """Score every response of a dataset with a reward model: adds pred_<attribute> (raw) and label_<attribute>
    (SteerLM label: clamped to 0-4, rounded) to each row, in input order. Rerunning resumes where it stopped.

    Input rows: HelpSteer2 (prompt + response), chat `messages`, prompt messages + response, or NeMo/Daring Anteater
    `conversations`. --reward-url scores with `hs2 serve-rm` instead of --model (same numbers). Further
    `--key value` pairs (e.g. `--chunk_size 256`) go to the stage.
    """
    options = {"model_name_or_path": model, "dataset_name": dataset, "output": output, "dataset_split": split,
               "weights": weights, "batch_size": batch_size, "max_length": max_length, "max_rows": max_rows,
               "dtype": dtype, "overwrite": overwrite, "device_map": device_map, "reward_url": reward_url,
               "reward_api_key_env": reward_api_key_env}
    args = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        args += [f"--{key}", "true" if value is True else str(value)]
    launch_stage("annotate", args + list(ctx.args), accelerate_config, num_processes, launcher_args, dry_run)


@app.command("export-rm")
def export_rm(
    model: Model = None,
    weights: Weights = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Folder for the 1-output model.")] = None,
    label: Annotated[str | None, typer.Option(
        "--label", help="id2label name of the output (default: the preset name, or 'reward').")] = None,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Dtype to load and save in (auto keeps the checkpoint's).")] = "auto",
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="Reload the export and compare it with the source on probe texts.")] = True,
    dry_run: Preview = False,
) -> None:
    """Fold a multi-attribute RM's weighted heads into one linear layer: a 1-output AutoModelForSequenceClassification
    whose logit is the weighted sum of the attributes (for stock TRL trainers, RewardBench's tool, HF pipelines)."""
    exit_on_user_error(_export_rm)(model, weights, output, label, dtype, check, dry_run)


PROBES = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Write a haiku about rain."},
     {"role": "assistant", "content": "Soft rain on the roof,\nthe garden drinks quietly,\nclouds fold into night."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}],
]


def _export_rm(model, weights, output, label, dtype, check, dry_run) -> None:
    from hs2trl.rm.rewards import check_weights

    model = _required(model, "--model", "export-rm")
    weights = _required(weights, "--weights", "export-rm")
    output = _required(output, "--output", "export-rm")
    if Path(output).resolve() == Path(model).resolve():
        raise Hs2Error("export-rm: --output must differ from --model")
    check_weights(weights, model)
    if _preview(dry_run, f"export {model} with weights {weights} to {output}"):
        return
    with output_lock(output, "export-rm"):
        _export(model, weights, output, label, dtype, check)


def _export(model, weights, output, label, dtype, check) -> None:
    from hs2trl.rm.rewards import check_export, export_scalar_model

    export = export_scalar_model(model, weights, output, label=label, dtype=dtype)
    formula = " + ".join(f"{w:g}*{a}" for a, w in export["weights"].items() if w)
    print(f"hs2: exported {output}: 1 output '{export['label']}' = {formula}", flush=True)
    if check:
        diff = check_export(model, output, list(export["weights"].values()), PROBES, dtype=dtype)
        from transformers import AutoConfig

        exact = str(getattr(AutoConfig.from_pretrained(output), "dtype", None) or "float32").endswith("float32")
        tolerance = 1e-4 if exact else 5e-2
        print(f"hs2: check: max |exported - weighted sum| over {len(PROBES)} probe conversations "
              f"= {diff:.2e}", flush=True)
        if not diff <= tolerance:
            raise Hs2Error("export-rm: the exported model differs from the weighted sum "
                           f"by {diff:.3g} (> {tolerance:g})")


@app.command("eval-rm")
def eval_rm(
    model: Model = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", help=f"For a multi-attribute RM: {WEIGHTS_HELP} (default rewardbench-llama3-70b); a "
                                "1-output RM is scored directly.")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="allenai/reward-bench (split filtered, the default) or a local "
                          "RewardBench-format file; with --benchmark rewardbench2: allenai/reward-bench-2 "
                          "(split test) or a local RewardBench 2 file.")] = None,
    benchmark: Annotated[str, typer.Option(
        "--benchmark", help="rewardbench (RewardBench 1) or rewardbench2 (RewardBench 2: best-of-4 and "
                            "Ties, mean of six subsets).")] = "rewardbench",
    output_dir: Annotated[str | None, typer.Option(
        "--output-dir", "-o", help="Where results.json, per_example.jsonl and the chart (sections.png; "
                                   "subsets.png for RewardBench 2) go (default outputs/eval-rm/<model>-<weights> "
                                   "with a preset, else outputs/eval-rm/<model>; -rewardbench2 appended for "
                                   "RewardBench 2).")] = None,
    batch_size: BatchSize = 8,
    max_length: MaxLength = None,
    max_rows: MaxRows = None,
    per_subset: Annotated[int | None, typer.Option(
        "--per-subset", help="Score only the first N pairs of each subset (a quick look).")] = None,
    dtype: Dtype = "float32",
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    device_map: DeviceMap = None,
    dry_run: Preview = False,
) -> None:
    """RewardBench as its leaderboard scores it: per-subset accuracy (chosen must score strictly higher), the sections
    Chat, Chat Hard, Safety, Reasoning (example-weighted; math-prm weighted like all code subsets together) and
    overall = their mean. With --benchmark rewardbench2, RewardBench 2: best-of-4 on Factuality, Precise IF, Math,
    Safety and Focus (1/k when the chosen ties k-way at the top), the reference's weighted Ties score, their mean."""
    exit_on_user_error(_eval_rm)(model, weights, dataset, output_dir, batch_size, max_length, max_rows, per_subset,
                                 dtype, device, device_map, dry_run, benchmark)


def _eval_rm(model, weights, dataset, output_dir, batch_size, max_length, max_rows, per_subset, dtype, device,
             device_map, dry_run, benchmark="rewardbench") -> None:
    from hs2trl.rm import rewardbench, rewardbench2
    from hs2trl.rm.rewards import check_weights
    from hs2trl.runtime.say import say

    benchmarks = {"rewardbench": rewardbench, "rewardbench2": rewardbench2}
    if benchmark not in benchmarks:
        raise Hs2Error(f"eval-rm: --benchmark must be rewardbench or rewardbench2, got '{benchmark}'")
    bench = benchmarks[benchmark]
    model = _required(model, "--model", "eval-rm")
    if output_dir is None:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name or "model")
        name += f"-{weights}" if weights and "," not in weights else ""
        name += "-rewardbench2" if bench is rewardbench2 else ""
        output_dir = str(Path("outputs", "eval-rm", name))
    check_weights(weights, model)
    if _preview(dry_run, f"evaluate {model} (weights: {weights or 'default'}) on {dataset or bench.HUB_ID} "
                         f"-> {output_dir}"):
        return
    with output_lock(output_dir, "eval-rm"):
        results = bench.evaluate(model, dataset, weights, output_dir, batch_size=batch_size, max_length=max_length,
                                 max_rows=max_rows, dtype=dtype, device=device, device_map=device_map,
                                 per_subset=per_subset)
    bench.print_table(results)
    say(f"scored {results['rows']} {'prompts' if bench is rewardbench2 else 'pairs'} in "
        f"{results['scoring_seconds']:.1f}s on {results['device']}; wrote {output_dir}/results.json, "
        f"per_example.jsonl, {bench.CHART}")


@app.command("serve-rm")
def serve_rm(
    model: Model = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", help=f"The `reward` of each answer: {WEIGHTS_HELP} (default goodness; a 1-output RM is its "
                                "own reward).")] = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Anything but loopback needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", help="Environment variable holding the API key (clients send `Authorization: Bearer`). "
                              "Set: every route but /health needs it.")] = "HS2_RM_API_KEY",
    devices: Annotated[str | None, typer.Option(
        "--devices", help="One model replica per device: cuda:0,cuda:1 | all (every GPU) | cpu (default: cuda:0 "
                          "when there is a GPU, else cpu).")] = None,
    device_map: DeviceMap = None,
    dtype: Dtype = "float32",
    max_batch_tokens: Annotated[int, typer.Option(
        "--max-batch-tokens", help="Tokens per forward pass (items of concurrent requests share it).")] = 16384,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", help="How long the oldest queued item waits for a fuller batch.")] = 10.0,
    max_items: Annotated[int, typer.Option("--max-items", help="Items per request (413 beyond).")] = 256,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", help="Tokens per item; longer ones are cut from the left, as `hs2 annotate` cuts them, and "
                             "counted in the answer.")] = 4096,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Request body limit (413 beyond).")] = 16.0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Items waiting at most; beyond, 503 with Retry-After.")] = 4096,
    shutdown_timeout: Annotated[float, typer.Option(
        "--shutdown-timeout", help="On SIGTERM / Ctrl-C, seconds the requests in flight get to finish.")] = 8.0,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="uvicorn's log level (info adds an access line per request; never texts or keys).")
    ] = "warning",
    dry_run: Preview = False,
) -> None:
    """Serve a reward model over HTTP: POST /v1/score (conversations or prompt/response rows -> the attributes and the
    weighted reward, as `hs2 annotate` scores them), POST /get_reward (OpenRLHF's --remote_rm_url protocol), GET
    /v1/model, /health, /metrics (Prometheus). Concurrent requests are batched; one replica per device.

    Clients: `--reward-url http://HOST:PORT` in annotate, dpo --iterative, steerlm2, eval-policy, rloo and grpo."""
    exit_on_user_error(_serve_rm)(model, weights, host, port, api_key_env, devices, device_map, dtype,
                                  max_batch_tokens, max_wait_ms, max_items, max_length, max_body_mb, max_queue,
                                  shutdown_timeout, log_level, dry_run)


def _serve_rm(model, weights, host, port, api_key_env, devices, device_map, dtype, max_batch_tokens, max_wait_ms,
              max_items, max_length, max_body_mb, max_queue, shutdown_timeout, log_level, dry_run) -> None:
    import os

    from hs2trl.rm.loading import reward_model_attributes
    from hs2trl.rm.rewards import check_weights
    from hs2trl.rm.server import Limits, bind_socket, check_bind, load_service, parse_devices, serve
    from hs2trl.runtime.say import say

    model = _required(model, "--model", "serve-rm")
    api_key = os.environ.get(api_key_env) or None
    if not dry_run:  # a dry run may be previewed where the key is not set: it says so instead (below)
        check_bind(host, api_key, api_key_env)  # before anything loads
    limits = Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_items=max_items, max_length=max_length,
                    max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue)
    limits.check()
    if dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise Hs2Error(f"serve-rm: --dtype must be float32, bfloat16, float16 or auto, got '{dtype}'")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise Hs2Error(f"serve-rm: --log-level must be critical, error, warning, info or debug, got '{log_level}'")
    check_weights(weights, model)
    placement = parse_devices(devices) if device_map is None else []
    if dry_run:
        try:
            check_bind(host, api_key, api_key_env)
            key = f"from ${api_key_env}" if api_key else "none: loopback only"
        except Hs2Error:
            key = f"${api_key_env} is not set here: the real run refuses --host {host} until it is"
        _preview(True, f"serve {model} on http://{host}:{port} ({', '.join(placement) or 'device_map=' + device_map}"
                       f"; key: {key})")
        return
    if os.path.isdir(model):
        reward_model_attributes(model)  # a folder that is not a reward model fails before the port is taken
    sock = bind_socket(host, port)
    service = load_service(model, placement, weights, limits, dtype=dtype, device_map=device_map)
    shown = f"[{host}]" if ":" in host else host
    say(f"serving {model} on http://{shown}:{port} ({len(service.devices)} replica(s): {', '.join(service.devices)}; "
        f"reward = {service.weights_name}; key {'required' if api_key else 'off (loopback only)'}); "
        "Ctrl-C or SIGTERM stops it")
    serve(service, sock, api_key, shutdown_timeout, log_level)
    say("serve-rm: stopped (requests in flight finished)")


@app.command("rm-normalize")
def rm_normalize(
    model: Model = None,
    dataset: Dataset = None,
    split: Split = "train",
    weights: Annotated[str, typer.Option(
        "--weights", "-w", help=f"The reward to normalise: {WEIGHTS_HELP}.")] = "goodness",
    max_rows: MaxRows = None,
    batch_size: BatchSize = 16,
    store: Annotated[bool, typer.Option(
        "--store/--no-store", help="Store the result with the model (or only print it).")] = True,
    dry_run: Preview = False,
) -> None:
    """Measure the mean and std of a weighted reward over a dataset's responses and store them with the model
    (hs2trl_reward.json), where PPO reads them: reward = (r - mean) / std (paper: goodness over HelpSteer2)."""
    exit_on_user_error(_rm_normalize)(model, dataset, split, weights, max_rows, batch_size, store, dry_run)


def _rm_normalize(model, dataset, split, weights, max_rows, batch_size, store, dry_run) -> None:
    from hs2trl.data.sources import read_records
    from hs2trl.rm.annotate import row_conversation
    from hs2trl.rm.rewards import REWARD_INFO_FILE, check_weights, measure_normalization
    from hs2trl.runtime.outputs import check_writable

    model = _required(model, "--model", "rm-normalize")
    dataset = _required(dataset, "--dataset", "rm-normalize")
    check_weights(weights, model)
    if _preview(dry_run, f"measure {weights} of {model} over {dataset} ({split})"):
        return
    if store and Path(model).is_dir():
        check_writable(Path(model, REWARD_INFO_FILE))
    records = read_records(dataset, split)[:max_rows]
    conversations = [row_conversation(r) for r in records]
    source = dataset if Path(dataset).exists() or dataset.startswith("demo:") else f"{dataset}[{split}]"
    entry = measure_normalization(model, conversations, weights, dataset=source, batch_size=batch_size,
                                  store=store)
    print(f"hs2: {entry['name']} over {entry['n']} responses of {source}: "
          f"mean {entry['mean']:.4f}, std {entry['std']:.4f}"
          + ("" if not store else f" (stored in {Path(model, REWARD_INFO_FILE)})"), flush=True)


@data_app.command("stats")
def data_stats(
    dataset: Dataset = None,
    split: Split = "train",
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as one JSON object.")] = False,
    plot: Annotated[str | None, typer.Option(
        "--plot", help="Heat-map PNG path (default: <dataset>_stats.png here).")] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write the heat-map.")] = False,
    max_rows: MaxRows = None,
    dry_run: Preview = False,
) -> None:
    """The paper's Table 2 for HelpSteer-format data: mean and std of each attribute and Pearson r with helpfulness
    of each attribute, the number of turns, prompt and response characters; a correlation heat-map PNG.

    Preference data (HelpSteer2-/HelpSteer3-Preference, chosen/rejected rows) gets the strength histogram (-3..3) and
    its rows, pairs and ties instead."""
    if not _preview(dry_run, f"statistics of {dataset} ({split})"):
        exit_on_user_error(_data_stats)(dataset, split, as_json, plot, no_plot, max_rows)


def default_plot_path(dataset: str, split: str) -> str:
    name = Path(dataset).name
    for suffix in (".jsonl.gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    if not Path(dataset).exists():  # a Hub id or demo name: the split is part of what was measured
        name = f"{dataset}-{split}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) + "_stats.png"


def _data_stats(dataset, split, as_json, plot, no_plot, max_rows) -> None:
    from hs2trl.data.sources import read_records
    from hs2trl.rm.stats import dataset_stats, plot_heatmap, print_stats
    from hs2trl.runtime.outputs import check_writable

    dataset = _required(dataset, "--dataset", "data stats")
    asked_plot = plot
    if not no_plot:
        plot = plot or default_plot_path(dataset, split)
        check_writable(plot)
    records = read_records(dataset, split)[:max_rows]
    from hs2trl.data.preference import preference_format

    if preference_format(records) is not None:
        _preference_stats(dataset, split, records, as_json, asked_plot)
        return
    stats = dataset_stats(records)
    stats["dataset"] = dataset
    if not no_plot:
        stats["plot"] = plot_heatmap(stats, plot, title=f"{Path(dataset).name}: Pearson r")
    if as_json:
        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats, f"{dataset} ({stats['rows']} rows): mean (std) and Pearson r with helpfulness")
    if not no_plot:
        print(f"hs2: heat-map written to {stats['plot']}", file=sys.stderr if as_json else sys.stdout, flush=True)


def _preference_stats(dataset, split, records, as_json, asked_plot) -> None:
    from hs2trl.rm.stats import preference_stats, print_preference_stats
    from hs2trl.runtime.say import say

    stats = {"dataset": dataset, **preference_stats(records)}
    if as_json:
        print(json.dumps(stats, indent=2))
    else:
        print_preference_stats(stats, f"{dataset} ({split}): preference strengths")
    if asked_plot:
        say(f"no heat-map for preference data ({asked_plot} not written)", err=as_json)


@data_app.command("to-pairs")
def to_pairs(
    dataset: Dataset = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Where to write the pairs (.jsonl).")] = None,
    split: Split = "train",
    dry_run: Preview = False,
) -> None:
    """Preference rows -> TRL reward-model pairs with their strength: HelpSteer2-Preference
    (nvidia/HelpSteer2:preference or a file), HelpSteer3-Preference, or chosen/rejected rows (optional margin).

    Writes one JSON object per pair: prompt (chat messages; multi-turn prompts kept as turns), chosen and rejected (one
    assistant message each) and margin = |strength| (a chosen/rejected row's margin, else 1). Strength 0 (about the
    same) is dropped and counted."""
    if not _preview(dry_run, f"write the preference pairs of {dataset} ({split}) to {output}"):
        exit_on_user_error(_to_pairs)(dataset, output, split)


def _to_pairs(dataset, output, split) -> None:
    from hs2trl.data.preference import preference_format, preference_pairs, trl_row
    from hs2trl.data.records import write_jsonl
    from hs2trl.data.sources import read_records
    from hs2trl.runtime.say import say

    dataset = _required(dataset, "--dataset", "data to-pairs")
    output = _required(output, "--output", "data to-pairs")
    with output_lock(output, "data to-pairs"):
        records = read_records(dataset, split)
        pairs, stats = preference_pairs(records)
        write_jsonl(output, (trl_row(p) for p in pairs))
    say(f"{output}: {stats.rows} rows read ({preference_format(records)}), {stats.pairs} pairs written, "
        f"{stats.ties_dropped} ties dropped (strength 0)")
