"""The reward-model server under concurrent clients, rows/s: `hs2 serve-rm` vs offline scoring (`hs2 annotate`).

The bench's RM (the same 5-output model the annotation bench scores) is saved to a folder once; the offline side
loads it from there (`rm.loading.load_reward_model`, what `hs2 annotate --model` loads) and the server is a real
`python -m hs2trl.cli serve-rm --model FOLDER` subprocess on a free loopback port, started once (its model load is
not timed: the bench waits for `/health`), reused by every repeat and stopped with SIGTERM at the end (it must exit
0). Both score the annotation bench's conversations:

- `offline`: `rm.scoring.score_conversations` over all of them, at the annotation bench's batch size;
- `server` (per request-size config, `server` = 1 conversation per request, `server_xN` = N): `clients` threads, each
  with its own `httpx.Client` (connection opened before the clock starts), take the rows round-robin and POST
  `/v1/score` one request after another; rows/s = rows / (last answer - first send); per-request latency p50/p99.

The server's attributes must equal the offline scores (`max_abs_attribute_diff_vs_offline`: 1e-4 in fp32, 3e-2 in
bf16, where batches of other sizes round differently). The server's `/metrics` are read around each run: items and
tokens per forward pass show how well it batched. Process CPU time (server + clients vs offline) is recorded too: on
a shared CPU, `rm_server_cpu_efficiency_vs_offline` moves less with other load than the rows/s ratio.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.measure import interleaved, medians, quantiles
from benchmarks.workload import REPO
from tests.helpers.rm_server import free_port

HEALTH_TIMEOUT_S = 600.0  # model load on a busy CPU
STOP_TIMEOUT_S = 60.0
SCORE_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # bf16 (GPU): batches of other sizes round differently


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (as `measure.quantiles` picks), q in [0, 1]."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] if values else math.nan


class ServerProcess:
    """`python -m hs2trl.cli serve-rm` in a subprocess: started, waited for (/health), stopped with SIGTERM."""

    def __init__(self, model_dir: Path, options: list[str], log_file: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "hs2trl.cli", "serve-rm", "--model", str(model_dir),
                        "--host", "127.0.0.1", "--port", str(self.port), *options]
        self.log_file = log_file
        self._log = open(log_file, "w")  # closed in stop()
        self.process = subprocess.Popen(self.command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.http = httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)

    def tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = HEALTH_TIMEOUT_S) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"bench: serve-rm exited {self.process.returncode} before it was ready:\n"
                                   f"{self.tail()}")
            try:
                if self.http.get("/health").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"bench: serve-rm not ready after {timeout:.0f} s:\n{self.tail()}")

    def metrics(self) -> dict:
        """Counters of interest from /metrics (Prometheus text): requests, batches, items and tokens."""
        wanted = {"hs2_rm_batch_items_count": "batches", "hs2_rm_batch_items_sum": "batch_items",
                  "hs2_rm_batch_tokens_sum": "batch_tokens", "hs2_rm_batch_seconds_sum": "batch_seconds",
                  "hs2_rm_batch_errors_total": "batch_errors", "hs2_rm_truncated_items_total": "truncated"}
        out = dict.fromkeys(wanted.values(), 0.0)
        for line in self.http.get("/metrics").text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in wanted:
                out[wanted[parts[0]]] = float(parts[1])
        return out

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.process.pid).cpu_times()
        return t.user + t.system

    def rss_mib(self) -> float:
        import psutil

        return round(psutil.Process(self.process.pid).memory_info().rss / 2**20, 1)

    def stop(self) -> int | None:
        """SIGTERM, wait; the exit status (None: it had to be killed)."""
        self.http.close()
        code = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            code = self.process.returncode
        self._log.close()
        return code


def client_run(url: str, conversations: list, clients: int, per_request: int) -> dict:
    """`clients` threads, each with its own httpx.Client, POST /v1/score for their share of the rows (round-robin
    over request-sized chunks), one request after another. Returns timings and the attributes, in row order."""
    import httpx

    chunks = [list(range(i, min(i + per_request, len(conversations))))
              for i in range(0, len(conversations), per_request)]
    shares = [chunks[c::clients] for c in range(clients)]
    shares = [s for s in shares if s]
    answers: list = [None] * len(conversations)
    latencies: list[float] = []
    sends: list[float] = []
    receives: list[float] = []
    truncated: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(len(shares) + 1)

    def worker(share):
        with httpx.Client(base_url=url, timeout=600.0, trust_env=False) as http:
            try:
                http.get("/health")  # the connection is open before the clock starts (a client keeps it open)
            except Exception as err:  # the request below fails too, and is recorded there
                with lock:
                    errors.append(f"connect: {type(err).__name__}")
            ready.wait()
            for rows in share:
                body = {"conversations": [conversations[i] for i in rows]}
                t = time.perf_counter()
                try:
                    r = http.post("/v1/score", json=body)
                    done = time.perf_counter()
                    r.raise_for_status()
                    payload = r.json()
                except Exception as err:  # recorded; the run is marked failed
                    with lock:
                        errors.append(f"{type(err).__name__}: {str(err)[:200]}")
                    continue
                with lock:
                    sends.append(t)
                    receives.append(done)
                    latencies.append(done - t)
                    truncated.append(payload.get("truncated", 0))
                    for i, result in zip(rows, payload["results"]):
                        answers[i] = result
    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in shares]
    for t in threads:
        t.start()
    ready.wait()
    c = time.process_time()
    for t in threads:
        t.join()
    client_cpu = time.process_time() - c
    seconds = (max(receives) - min(sends)) if sends else math.nan
    return {"seconds": seconds, "rows": sum(a is not None for a in answers), "requests": len(latencies),
            "errors": errors, "answers": answers, "latencies": latencies, "truncated": sum(truncated),
            "client_threads": len(shares), "client_cpu_seconds": client_cpu}


def run_rm_server(base, data, settings, log=print) -> dict:
    import torch

    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.scoring import score_conversations

    conversations = data["conversations"]
    clients, batch_size, device = settings["rm_server_clients"], settings["annotate_batch_size"], settings["device"]
    request_sizes = settings.get("rm_server_request_rows") or [1]
    dtype = "bfloat16" if settings["bf16"] and device == "cuda" else "float32"  # as the annotation bench's scorer
    folder = settings["work_dir"] / "rm-server-rm"
    base["regression"].save_pretrained(folder)
    base["tokenizer"].save_pretrained(folder)
    model, tokenizer, attributes = load_reward_model(str(folder), dtype=dtype, device=device)

    options = ["--dtype", dtype, "--devices", "cuda:0" if device == "cuda" else "cpu",
               *settings.get("rm_server_options", [])]
    server = ServerProcess(folder, options, settings["work_dir"] / "rm-server.log")
    try:
        load_seconds = server.wait_ready()
        log(f"bench: rm server up on {server.url} in {load_seconds:.1f} s (model load, untimed): "
            f"{' '.join(server.command[2:])}")
        # warm-up, untimed: a small batch through each path (the server's first forward pass, lazy inits)
        score_conversations(model, tokenizer, conversations[:2], batch_size=2)
        warm = client_run(server.url, conversations[:4], min(clients, 4), 1)
        if warm["errors"]:
            raise RuntimeError(f"bench: rm server warm-up failed: {warm['errors'][0]}\n{server.tail()}")

        def run_one(kind):
            if kind == "offline":
                if device == "cuda":
                    torch.cuda.synchronize()
                t, c = time.perf_counter(), time.process_time()
                scores = score_conversations(model, tokenizer, conversations, batch_size=batch_size)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds, cpu = time.perf_counter() - t, time.process_time() - c
                return {"seconds": round(seconds, 3), "rows_per_s": len(conversations) / seconds,
                        "rows_per_cpu_s": len(conversations) / max(cpu, 1e-9), "scores": scores}
            per_request = request_sizes[0] if kind == "server" else int(kind.removeprefix("server_x"))
            before, cpu_before = server.metrics(), server.cpu_seconds()
            x = client_run(server.url, conversations, clients, per_request)
            after, cpu = server.metrics(), server.cpu_seconds() - cpu_before
            batches = {k: after[k] - before[k] for k in after}
            lat = x["latencies"]
            return {  # rows answered (a failed request's rows do not count)
                "seconds": round(x["seconds"], 3), "rows_per_s": x["rows"] / x["seconds"],
                "rows_per_cpu_s": x["rows"] / max(cpu + x["client_cpu_seconds"], 1e-9),
                "server_cpu_seconds": round(cpu, 3), "client_cpu_seconds": round(x["client_cpu_seconds"], 3),
                "requests": x["requests"], "rows_per_request": per_request, "client_threads": x["client_threads"],
                "errors": x["errors"][:5], "error_count": len(x["errors"]), "truncated": x["truncated"],
                "latency_ms_p50": 1000 * percentile(lat, 0.5), "latency_ms_p99": 1000 * percentile(lat, 0.99),
                "latency_ms": {k: round(1000 * v, 1) for k, v in quantiles(lat).items()} if lat else {},
                "forward_passes": int(batches["batches"]),
                "items_per_forward": batches["batch_items"] / max(batches["batches"], 1),
                "tokens_per_forward": batches["batch_tokens"] / max(batches["batches"], 1),
                "forward_seconds": round(batches["batch_seconds"], 3),
                "batch_errors": int(batches["batch_errors"]),
                "answers": x["answers"], "all_latencies": lat,
            }

        kinds = ["offline", "server"] + [f"server_x{n}" for n in request_sizes[1:]]
        repeats = settings["repeats"]

        def describe(r, kind, x):
            line = f"bench: rm server repeat {r + 1}/{repeats} {kind:10s} {x['rows_per_s']:7.2f} rows/s"
            if kind != "offline":
                line += (f", latency p50 {x['latency_ms_p50']:.0f} ms p99 {x['latency_ms_p99']:.0f} ms, "
                         f"{x['items_per_forward']:.1f} rows / {x['tokens_per_forward']:.0f} tokens per forward"
                         + (f", {x['error_count']} failed requests" if x["error_count"] else ""))
            return line

        runs = interleaved(kinds, repeats, run_one, describe, log)
        server_rss = server.rss_mib()
    finally:
        exit_code = server.stop()
    log(f"bench: rm server stopped with SIGTERM: exit status {exit_code}")

    offline = runs["offline"][0]["scores"]
    diffs, missing = {}, 0
    for kind in kinds[1:]:
        worst = 0.0
        for x in runs[kind]:
            for i, answer in enumerate(x["answers"]):
                if answer is None:
                    missing += 1
                    continue
                served = torch.tensor([answer["attributes"][a] for a in attributes])
                worst = max(worst, float((served - offline[i]).abs().max()))
        diffs[kind] = worst
    offline_spread = max(float((x["scores"] - offline).abs().max()) for x in runs["offline"])
    all_latencies = {kind: [v for x in runs[kind] for v in x.pop("all_latencies")] for kind in kinds[1:]}
    for kind in kinds:
        for x in runs[kind]:
            x.pop("scores", None)
            x.pop("answers", None)
    summary = {}
    for kind in kinds:
        keys = ["rows_per_s", "rows_per_cpu_s", "seconds"]
        if kind != "offline":
            keys += ["latency_ms_p50", "latency_ms_p99", "items_per_forward", "tokens_per_forward"]
        summary[kind] = {**medians(runs[kind], *keys), "runs": runs[kind]}
        if kind != "offline":
            lat = all_latencies[kind]
            summary[kind]["latency_ms_all_repeats"] = {"p50": 1000 * percentile(lat, 0.5),
                                                       "p99": 1000 * percentile(lat, 0.99),
                                                       "max": 1000 * max(lat) if lat else math.nan}
    diff = max(diffs.values()) if diffs else math.nan
    failed = sum(x["error_count"] for kind in kinds[1:] for x in runs[kind])
    offline_rate = summary["offline"]["rows_per_s_median"]
    return {
        "configs": summary,
        "rows": len(conversations), "clients": clients, "rows_per_request": request_sizes,
        "offline_batch_size": batch_size, "dtype": dtype,
        "server_command": " ".join(server.command[2:]), "server_options": options,
        "server_model_load_seconds": round(load_seconds, 1), "server_rss_mib_end": server_rss,
        "server_exit_code": exit_code, "server_exit_clean": exit_code == 0,
        "rm_server_throughput_vs_offline": summary["server"]["rows_per_s_median"] / offline_rate,
        "rm_server_cpu_efficiency_vs_offline": (summary["server"]["rows_per_cpu_s_median"]
                                                / summary["offline"]["rows_per_cpu_s_median"]),
        **{f"{kind}_throughput_vs_offline": summary[kind]["rows_per_s_median"] / offline_rate
           for kind in kinds[2:]},
        "latency_ms_p50": summary["server"]["latency_ms_p50_median"],
        "latency_ms_p99": summary["server"]["latency_ms_p99_median"],
        "max_abs_attribute_diff_vs_offline": diff,
        "max_abs_attribute_diff_by_config": diffs,
        "offline_repeat_max_abs_diff": offline_spread,
        "score_tolerance": SCORE_TOLERANCE[dtype],
        "scores_match": bool(diff <= SCORE_TOLERANCE[dtype]) and not missing,
        "missing_answers": missing, "failed_requests": failed,
    }
