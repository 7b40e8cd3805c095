"""`hs2 serve-rm`: a reward model behind HTTP, for policy runs on other nodes (FastAPI, served by uvicorn).

Routes (every one but `/health` needs `Authorization: Bearer KEY` when the server has a key; compared in constant
time):
- `POST /v1/score`: conversations or HelpSteer2 rows (`rm.protocol`) -> per item, in order, the attribute predictions
  and the weighted reward: `{"results": [{"attributes": {..}, "reward": r}], "truncated": n, ...}`;
- `POST /get_reward`: OpenRLHF's remote-RM protocol (`--remote_rm_url`): `{"rewards", "scores", "extra_logs"}`, one
  value per query, `extra_logs` one list per attribute;
- `GET /v1/model`: the model's outputs, weights, stored normalisation (hs2trl_reward.json) and limits (what
  `--reward-url` clients read); `GET /health`; `GET /metrics` (Prometheus text).

Conversations are rendered and read exactly as `hs2 annotate` reads them (`data.chat`, `rm.scoring`), so the numbers
are the same. Items of concurrent requests are batched (`rm.batcher`), one worker per model replica. Safe by default:
it binds 127.0.0.1; a non-loopback address needs a key (`check_bind`); bodies, items and tokens are limited; a full
queue answers 503 with Retry-After; a failed batch answers 500 to its requests only. Request texts and keys are never
logged. SIGTERM / Ctrl-C: uvicorn stops accepting, the requests in flight finish, the process exits 0.
"""


import asyncio
import hmac
import ipaddress
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from hs2trl.runtime.errors import Hs2Error

log = logging.getLogger("hs2trl.serve_rm")
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_items: int = 256  # per request
    max_length: int | None = 4096  # tokens per item; longer ones are cut from the left, as `annotate` cuts them
    max_batch_tokens: int = 16384  # per forward pass
    max_wait_ms: float = 10.0  # how long the oldest queued item waits for a fuller batch
    max_queue: int = 4096  # items waiting; beyond, 503

    def check(self) -> None:
        for name in ("max_body_bytes", "max_items", "max_batch_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise Hs2Error(f"serve-rm: --{name.replace('_', '-')} must be at least 1")
        if self.max_length is not None and self.max_length < 2:
            raise Hs2Error("serve-rm: --max-length must be at least 2 tokens")
        if self.max_wait_ms < 0:
            raise Hs2Error("serve-rm: --max-wait-ms must not be negative")
        if self.max_items > self.max_queue:
            raise Hs2Error(f"serve-rm: --max-items {self.max_items} exceeds --max-queue {self.max_queue}")


# ------------------------------------------------------------------------------------------------ safety checks


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_bind(host: str, api_key: str | None, key_env: str) -> None:
    """Refuse an address reachable from other machines without a key (OpenRLHF issue 1317: an open /get_reward)."""
    if not api_key and not is_loopback(host):
        raise Hs2Error(f"serve-rm: --host {host} is reachable from other machines: set an API key in ${key_env} "
                       "(clients send it as `Authorization: Bearer`), or serve on 127.0.0.1")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a taken port fails in one line, at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise Hs2Error(f"serve-rm: cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.set_inheritable(True)
    return sock


# ------------------------------------------------------------------------------------------------ the model side


class RewardService:
    """The replicas behind one batcher, and the tokenizer, outputs and weights the routes need."""

    def __init__(self, name: str, replicas: Sequence, devices: Sequence[str], weights: str | None, limits: Limits,
                 reward_info: dict, path: str):
        from hs2trl.data.chat import end_of_turn_id
        from hs2trl.rm.batcher import DynamicBatcher
        from hs2trl.rm.rewards import resolve_scoring_weights

        self.name, self.devices, self.limits, self.reward_info = name, list(devices), limits, reward_info
        self.tokenizer, self.attributes = replicas[0].tokenizer, list(replicas[0].attributes)
        self.weights, self.weights_name = resolve_scoring_weights(path, self.attributes, weights, "goodness",
                                                                  info=reward_info)
        self.end_of_turn = self.tokenizer.decode([end_of_turn_id(self.tokenizer)])
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to share between threads
        self.metrics = Metrics()
        self.batcher = DynamicBatcher([self._scorer(r) for r in replicas], max_batch_tokens=limits.max_batch_tokens,
                                      max_wait_ms=limits.max_wait_ms, max_queue=limits.max_queue,
                                      on_batch=self.metrics.batch)
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)

    @staticmethod
    def _scorer(replica):
        from hs2trl.rm.scoring import score_token_ids

        def score(sequences):  # one packed forward for the whole batch: the batcher already bounded its tokens
            return score_token_ids(replica.model, replica.tokenizer.pad_token_id, sequences, len(sequences))

        return score

    def encode(self, conversations: Sequence[Sequence[dict]] | None, queries: Sequence[str] | None,
               max_length: int | None) -> tuple[list[list[int]], int]:
        from hs2trl.data.chat import encode_conversation
        from hs2trl.rm.protocol import query_ids
        from hs2trl.rm.scoring import truncate_left

        with self._tokenizer_lock:
            if conversations is None:
                sequences = [query_ids(self.tokenizer, q, self.end_of_turn) for q in queries]
            else:
                sequences = [self._encode_item(encode_conversation, i, c) for i, c in enumerate(conversations)]
        limit = [n for n in (max_length, self.limits.max_length) if n]  # the request may ask for less
        return sequences, truncate_left(sequences, min(limit) if limit else None)

    def _encode_item(self, encode, i: int, conversation) -> list[int]:
        """A conversation the chat template refuses (roles out of order, a role it does not know) is the client's
        mistake: 400 naming the item, not a 500."""
        from hs2trl.rm.protocol import BadRequest

        try:
            return encode(self.tokenizer, conversation)
        except Exception as err:  # jinja2's TemplateError and friends; the message is the template's, not the text
            reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
            raise BadRequest(400, f"item {i}: the RM's chat template cannot render it ({reason})") from None

    async def score(self, sequences: list[list[int]]):
        """`[n, k]` predictions, in order (queued with other requests' items)."""
        import torch

        futures = self.batcher.submit(sequences)
        rows = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        return torch.stack(list(rows))

    def rewards(self, scores) -> list[float]:
        from hs2trl.rm.rewards import scalar_rewards

        return scalar_rewards(scores, self.weights).tolist()

    def describe(self) -> dict:
        return {"model": self.name, "attributes": self.attributes, "weights": self.weights_name,
                "reward_info": self.reward_info, "devices": self.devices, "limits": asdict(self.limits)}

    def close(self) -> None:
        self.batcher.close()


def parse_devices(spec: str | None) -> list[str]:
    """`cuda:0,cuda:1` -> one replica each; `all` -> every visible GPU; default: cuda:0 when there is one, else cpu."""
    import torch

    if spec in (None, "", "auto"):
        return ["cuda:0" if torch.cuda.is_available() else "cpu"]
    if spec == "all":
        if not torch.cuda.is_available():
            raise Hs2Error("serve-rm: --devices all: no GPU visible")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    for d in devices:
        try:
            torch.device(d)
        except RuntimeError:
            raise Hs2Error(f"serve-rm: --devices: '{d}' is not a device (cpu, cuda:0, ...)") from None
    if len(set(devices)) != len(devices):
        raise Hs2Error(f"serve-rm: --devices lists a device twice ({spec})")
    return devices


def load_service(model: str, devices: Sequence[str], weights: str | None, limits: Limits, dtype: str = "float32",
                 device_map: str | None = None) -> RewardService:
    """One replica per device (`device_map`: a single replica split over every GPU, for an RM too big for one)."""
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewards import read_reward_info
    from hs2trl.runtime.pretrained import resolve_model

    path = resolve_model(model)
    if device_map is not None:
        replicas, devices = [load_reward_model(path, dtype=dtype, device_map=device_map)], [f"device_map={device_map}"]
    else:
        replicas = [load_reward_model(path, dtype=dtype, device=d) for d in devices]
    return RewardService(model, replicas, devices, weights, limits, read_reward_info(path), path)


# ------------------------------------------------------------------------------------------------ metrics


class Metrics:
    """Prometheus metrics in a registry of their own (several apps may live in one process: tests, benchmarks)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hs2_rm_requests", "Requests answered", ["route", "status"], registry=r)
        self.items = Counter("hs2_rm_items", "Items scored", ["route"], registry=r)
        self.truncated = Counter("hs2_rm_truncated_items", "Items cut from the left to the token limit", registry=r)
        self.latency = Histogram("hs2_rm_request_seconds", "Request latency", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.batch_items = Histogram("hs2_rm_batch_items", "Items per forward pass", registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_tokens = Histogram("hs2_rm_batch_tokens", "Tokens per forward pass", registry=r,
                                      buckets=(64, 256, 1024, 4096, 16384, 65536, 262144))
        self.batch_seconds = Histogram("hs2_rm_batch_seconds", "Forward pass time", registry=r,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_errors = Counter("hs2_rm_batch_errors", "Forward passes that failed", registry=r)
        self.queue_depth = Gauge("hs2_rm_queue_depth", "Items waiting for a forward pass", registry=r)

    def batch(self, stats) -> None:
        self.batch_items.observe(stats.items)
        self.batch_tokens.observe(stats.tokens)
        self.batch_seconds.observe(stats.seconds)
        if not stats.ok:
            self.batch_errors.inc()

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ------------------------------------------------------------------------------------------------ the app


def create_app(service: RewardService, api_key: str | None):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from hs2trl.rm.batcher import Closed, QueueFull
    from hs2trl.rm.protocol import BadRequest, get_reward_request, score_request

    app = FastAPI(title="hs2trl reward model", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    limits, metrics = service.limits, service.metrics
    expected = f"Bearer {api_key}".encode() if api_key else None

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    async def read_json(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise BadRequest(413, f"body of {int(declared)} bytes, over this server's {limits.max_body_bytes}")
        body, size = bytearray(), 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise BadRequest(413, f"body over this server's {limits.max_body_bytes} bytes")
            body += chunk
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
            raise BadRequest(400, f"malformed JSON{where}") from None

    async def answer(route: str, request: Request, handle):
        """Auth, body, limits and errors as JSON, metrics; `handle(body)` does the route's work."""
        started = time.perf_counter()
        try:
            if not authorized(request):
                response = error(401, "missing or wrong API key (send `Authorization: Bearer KEY`)")
            else:
                response = await handle(await read_json(request))
        except BadRequest as err:
            response = error(err.status, err.message)
        except (QueueFull, Closed) as err:
            response = error(503, f"busy: {err}; retry later", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        except Exception as err:  # a failed forward pass: this request fails, the server goes on
            log.error("%s: scoring failed: %s", route, type(err).__name__)  # never the texts
            response = error(500, f"scoring failed ({type(err).__name__}); the server goes on")
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    async def scored(route: str, conversations, queries, max_length):
        sequences, truncated = await run_in_threadpool(service.encode, conversations, queries, max_length)
        scores = await service.score(sequences)
        metrics.items.labels(route).inc(len(sequences))
        metrics.truncated.inc(truncated)
        return scores, truncated

    @app.post("/v1/score")
    async def score(request: Request):
        async def handle(body):
            conversations, max_length = score_request(body, limits.max_items)
            scores, truncated = await scored("/v1/score", conversations, None, max_length)
            rewards = service.rewards(scores)
            results = [{"attributes": dict(zip(service.attributes, row)), "reward": r}
                       for row, r in zip(scores.tolist(), rewards)]
            return JSONResponse({"model": service.name, "weights": service.weights_name, "results": results,
                                 "truncated": truncated})

        return await answer("/v1/score", request, handle)

    @app.post("/get_reward")
    async def get_reward(request: Request):
        async def handle(body):
            queries = get_reward_request(body, limits.max_items)
            scores, _ = await scored("/get_reward", None, queries, None)
            rewards = service.rewards(scores)
            columns = scores.T.tolist()
            return JSONResponse({"rewards": rewards, "scores": rewards,
                                 "extra_logs": dict(zip(service.attributes, columns))})

        return await answer("/get_reward", request, handle)

    @app.get("/v1/model")
    async def model(request: Request):
        if not authorized(request):
            return error(401, "missing or wrong API key (send `Authorization: Bearer KEY`)")
        return JSONResponse(service.describe())

    @app.get("/health")
    async def health():
        return {"status": "ok", "replicas": len(service.devices), "queue": service.batcher.depth}

    @app.get("/metrics")
    async def prometheus(request: Request):
        if not authorized(request):
            return error(401, "missing or wrong API key (send `Authorization: Bearer KEY`)")
        content, content_type = metrics.text()
        return Response(content, media_type=content_type)

    return app


# ------------------------------------------------------------------------------------------------ running it


def serve(service: RewardService, sock: socket.socket, api_key: str | None, shutdown_timeout: float = 8.0,
          log_level: str = "warning") -> None:
    """Serve until SIGTERM / Ctrl-C, then finish the requests in flight (at most `shutdown_timeout` s) and return."""
    import uvicorn

    config = uvicorn.Config(create_app(service, api_key), log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=shutdown_timeout, access_log=log_level in ("info", "debug"))
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down: with the default handlers that would kill
    # the process (SIGTERM) or raise KeyboardInterrupt (Ctrl-C) after a clean shutdown. Exiting 0 is the contract.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        service.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
