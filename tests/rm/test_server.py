"""`hs2 serve-rm` as a real process on loopback: the numbers of `hs2 annotate`, the key, concurrency, OpenRLHF's
/get_reward, limits and errors, metrics, 503 on a full queue, SIGTERM under load; and the --reward-url client."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from tests.helpers.fixtures import ATTRS, helpsteer_rows, run_hs2, write_jsonl
from tests.helpers.rm_server import served

KEY = "test-key-Zq81"
ROWS = helpsteer_rows(10)  # 20 rows, one multi-turn prompt


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def server(tiny_rm_dir):
    with served(tiny_rm_dir, "--max-items", "64", "--max-body-mb", "0.25", key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def annotated(tiny_rm_dir, tmp_path_factory):
    """What `hs2 annotate --model` writes for ROWS (goodness reward)."""
    folder = tmp_path_factory.mktemp("annotated")
    data = write_jsonl(folder / "rows.jsonl", ROWS)
    out = folder / "local.jsonl"
    proc = run_hs2("annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out), "--weights",
                   "goodness")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return data, read(out)


def score(server, body, headers=None, **kw) -> httpx.Response:
    return httpx.post(server.url + "/v1/score", json=body, headers=server.headers if headers is None else headers,
                      timeout=60, **kw)


def test_score_equals_annotate_and_needs_the_key(server, annotated):
    _, local = annotated
    answer = score(server, {"rows": ROWS})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(ROWS) and answer.json()["truncated"] == 0
    for got, want in zip(results, local):
        assert [got["attributes"][a] for a in ATTRS] == pytest.approx([want[f"pred_{a}"] for a in ATTRS], abs=1e-4)
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-4)

    assert score(server, {"rows": ROWS}, headers={}).status_code == 401
    wrong = score(server, {"rows": ROWS}, headers={"Authorization": "Bearer " + KEY[:-1] + "x"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert httpx.get(server.url + "/v1/model").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # for load balancers: no key, no data

    info = httpx.get(server.url + "/v1/model", headers=server.headers).json()
    assert info["attributes"] == ATTRS and info["weights"] == "goodness" and info["limits"]["max_items"] == 64


def test_conversations_and_rows_score_alike(server):
    from hs2trl.data.helpsteer2 import conversation
    from hs2trl.data.records import Record

    conversations = [conversation(Record("x", i, r)) for i, r in enumerate(ROWS[:6])]
    by_rows = score(server, {"rows": ROWS[:6]}).json()["results"]
    by_messages = score(server, {"conversations": conversations}).json()["results"]
    assert [r["reward"] for r in by_messages] == pytest.approx([r["reward"] for r in by_rows], abs=1e-5)


def test_concurrent_clients_get_their_own_rows(server):
    """200 requests of 1-8 rows from 16 threads: every one answered 200, with its own rows' scores."""
    alone = {i: r["attributes"] for i, r in enumerate(score(server, {"rows": ROWS}).json()["results"])}
    rng = random.Random(0)
    requests = [rng.sample(range(len(ROWS)), rng.randint(1, 8)) for _ in range(200)]

    def send(picked):
        with_client = httpx.post(server.url + "/v1/score", json={"rows": [ROWS[i] for i in picked]},
                                 headers=server.headers, timeout=120)
        return picked, with_client

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, requests))
    assert len(answers) == 200
    for picked, answer in answers:
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert len(results) == len(picked)
        for i, got in zip(picked, results):
            assert [got["attributes"][a] for a in ATTRS] == pytest.approx([alone[i][a] for a in ATTRS], abs=1e-4)

    metrics = httpx.get(server.url + "/metrics", headers=server.headers).text
    assert 'hs2_rm_requests_total{route="/v1/score",status="200"}' in metrics
    batches = float(next(line.split()[-1] for line in metrics.splitlines()
                         if line.startswith("hs2_rm_batch_items_count")))
    scored = float(next(line.split()[-1] for line in metrics.splitlines()
                        if line.startswith('hs2_rm_items_total{route="/v1/score"}')))
    assert batches < scored  # concurrent requests shared forward passes
    for name in ("hs2_rm_queue_depth", "hs2_rm_request_seconds_bucket", "hs2_rm_batch_tokens_bucket"):
        assert name in metrics


def test_get_reward_is_openrlhfs_protocol(server, tokenizer):
    """`query` texts rendered with the RM's chat template score as the same messages do on /v1/score."""
    from hs2trl.data.chat import render
    from hs2trl.data.helpsteer2 import conversation
    from hs2trl.data.records import Record

    conversations = [conversation(Record("x", i, r)) for i, r in enumerate(ROWS[:5])]
    queries = [render(tokenizer, c) for c in conversations]
    queries[1] = queries[1].rstrip() + tokenizer.pad_token * 3  # padding, as a batch of decoded sequences may carry
    prompts = [render(tokenizer, c[:-1], add_generation_prompt=True) for c in conversations]
    answer = httpx.post(server.url + "/get_reward", json={"query": queries, "prompts": prompts, "labels": [""] * 5},
                        headers=server.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    want = score(server, {"conversations": conversations}).json()["results"]
    assert body["rewards"] == pytest.approx([r["reward"] for r in want], abs=1e-4)
    assert body["scores"] == body["rewards"]
    assert sorted(body["extra_logs"]) == sorted(ATTRS)
    assert body["extra_logs"]["helpfulness"] == pytest.approx([r["attributes"]["helpfulness"] for r in want],
                                                              abs=1e-4)
    short = httpx.post(server.url + "/get_reward", json={"query": queries, "prompts": prompts[:2]},
                       headers=server.headers)
    assert short.status_code == 400 and "prompts" in short.json()["error"]


def test_bad_requests_name_the_field_and_item(server):
    def error(body=None, content=None):
        answer = httpx.post(server.url + "/v1/score", json=body, content=content, headers=server.headers)
        return answer.status_code, answer.json()["error"]

    status, message = error(content=b'{"rows": [')
    assert status == 400 and message.startswith("malformed JSON")
    status, message = error({"rows": [ROWS[0], {"prompt": "Hi"}]})
    assert (status, message) == (400, "rows[1]: field 'response': missing column")
    status, message = error({"conversations": [[{"role": "user", "content": "Hi"}, {"role": "assistant"}]]})
    assert status == 400 and message.startswith("conversations[0]: message 1 must be")
    status, message = error({"conversations": [[{"role": "user", "content": "Hi"}]]})
    assert status == 400 and "conversations[0]" in message and "assistant" in message
    status, message = error({"prompts": []})
    assert status == 400 and "'conversations'" in message
    status, message = error({"rows": ROWS * 4})  # 80 items > --max-items 64
    assert status == 413 and "--max-items 64" in message
    status, message = error({"rows": [{"prompt": "x" * 300_000, "response": "y"}]})  # > 0.25 MB
    assert status == 413 and "body" in message
    status, message = error({"rows": ROWS[:2], "max_length": 0})
    assert status == 400 and message.startswith("max_length")


def test_truncation_is_counted_and_matches_annotate(server, tiny_rm_dir, tmp_path, annotated):
    data, _ = annotated
    answer = score(server, {"rows": ROWS, "max_length": 12}).json()
    assert answer["truncated"] == len(ROWS)  # every row is longer than 12 tokens
    out = tmp_path / "cut.jsonl"
    proc = run_hs2("annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out), "--max-length", "12")
    assert proc.returncode == 0 and "20 rows longer than max_length=12" in proc.stdout
    for got, want in zip(answer["results"], read(out)):
        assert got["attributes"]["helpfulness"] == pytest.approx(want["pred_helpfulness"], abs=1e-4)


def test_public_address_without_a_key_is_refused(tiny_rm_dir):
    import os

    env_key = os.environ.pop("HS2_RM_API_KEY", None)
    try:
        proc = run_hs2("serve-rm", "--model", tiny_rm_dir, "--host", "0.0.0.0", timeout=120)
    finally:
        if env_key is not None:
            os.environ["HS2_RM_API_KEY"] = env_key
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "HS2_RM_API_KEY" in proc.stderr and "0.0.0.0" in proc.stderr


@pytest.mark.slow
def test_full_queue_answers_503_and_sigterm_finishes_in_flight(tiny_rm_dir):
    """A small queue: a burst gets 503 + Retry-After, never a hang. Then SIGTERM under load: exit 0 within 10 s,
    and every request either completed or got a clear error."""
    with served(tiny_rm_dir, "--max-queue", "8", "--max-items", "8", "--max-wait-ms", "300") as server:
        def send(_):
            try:
                return httpx.post(server.url + "/v1/score", json={"rows": ROWS[:8]}, timeout=60)
            except httpx.TransportError as err:
                return err

        with ThreadPoolExecutor(12) as pool:
            burst = list(pool.map(send, range(12)))
        statuses = sorted(r.status_code for r in burst)
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses
        busy = next(r for r in burst if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]

        outcomes, stop = [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    answer = httpx.post(server.url + "/v1/score", json={"rows": ROWS[:2]}, timeout=30)
                    outcomes.append(answer.status_code)
                    assert answer.status_code != 200 or len(answer.json()["results"]) == 2
                except httpx.TransportError as err:  # refused once the server stopped listening: a clear error
                    outcomes.append(type(err).__name__)
                    time.sleep(0.05)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        started = time.monotonic()
        code = server.stop(timeout=10)
        took = time.monotonic() - started
        stop.set()
        for t in threads:
            t.join(30)
        assert code == 0 and took < 10
        assert outcomes.count(200) > 0
        assert set(outcomes) <= {200, 503, "ConnectError", "RemoteProtocolError", "ReadError"}
        assert "stopped" in server.proc.stdout.read()


def test_batch_error_fails_that_batch_only():
    """A forward pass that raises fails the requests in it; the worker goes on with the next batch."""
    from hs2trl.rm.batcher import DynamicBatcher, QueueFull

    def score_fn(sequences):
        if any(s[0] < 0 for s in sequences):
            raise RuntimeError("poisoned batch")
        return torch.tensor([[float(sum(s))] for s in sequences])

    batcher = DynamicBatcher([score_fn], max_batch_tokens=4, max_wait_ms=0, max_queue=6)
    try:
        bad = batcher.submit([[-1, 2]])
        with pytest.raises(RuntimeError, match="poisoned"):
            bad[0].result(timeout=10)
        good = batcher.submit([[1, 2], [3, 4], [5]])
        assert [f.result(timeout=10).item() for f in good] == [3.0, 7.0, 5.0]
        with pytest.raises(QueueFull):
            batcher.submit([[1]] * 7)
    finally:
        batcher.close(timeout=10)


@pytest.mark.slow
def test_annotate_with_reward_url_equals_local_and_resumes(tiny_rm_dir, server, annotated, tmp_path):
    """`hs2 annotate --reward-url` writes what local annotate writes; when its server goes away it fails in one line,
    keeps the rows written, and the rerun (against another server of the same RM) continues after them."""
    import os

    data, local = annotated
    env = {"HS2_RM_API_KEY": KEY, "HS2_RM_RETRY_SECONDS": "2"}
    os.environ.update(env)
    try:
        out = tmp_path / "remote.jsonl"
        proc = run_hs2("annotate", "--reward-url", server.url, "--dataset", data, "--output", str(out), "--weights",
                       "goodness", "--max-rows", "8", "--chunk_size", "4")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(read(out)) == 8

        with served(tiny_rm_dir) as gone:  # a second server, stopped before the rest is scored
            assert gone.stop() == 0
            proc = run_hs2("annotate", "--reward-url", gone.url, "--dataset", data, "--output", str(out),
                           "--weights", "goodness")
        assert proc.returncode == 2
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith("hs2: error: reward server http://127.0.0.1:") and "unreachable" in error
        assert len(read(out)) == 8  # kept

        proc = run_hs2("annotate", "--reward-url", server.url, "--dataset", data, "--output", str(out), "--weights",
                       "goodness")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "resuming: 8 of 20 rows" in proc.stdout
        remote = read(out)
        assert [r["response"] for r in remote] == [r["response"] for r in local]
        for got, want in zip(remote, local):
            for key in [f"pred_{a}" for a in ATTRS] + ["reward"]:
                assert got[key] == pytest.approx(want[key], abs=1e-4)
            assert all(got[f"label_{a}"] == want[f"label_{a}"] for a in ATTRS)

        proc = run_hs2("annotate", "--reward-url", server.url, "--model", tiny_rm_dir, "--dataset", data, "--output",
                       str(tmp_path / "x.jsonl"))
        assert proc.returncode == 2 and "both given" in proc.stderr
    finally:
        for key in env:
            os.environ.pop(key, None)


def test_client_spreads_over_urls_and_fails_in_one_line(server, annotated, monkeypatch):
    """Two URLs of one server: the same numbers, in order; a wrong key is one clear line, not a retry loop."""
    from hs2trl.data.helpsteer2 import conversation
    from hs2trl.data.records import Record
    from hs2trl.rm.client import RewardClient
    from hs2trl.rm.scorer import RemoteScorer
    from hs2trl.runtime.errors import Hs2Error

    _, local = annotated
    conversations = [conversation(Record("x", i, r)) for i, r in enumerate(ROWS)]
    localhost = server.url.replace("127.0.0.1", "localhost")
    scorer = RemoteScorer(RewardClient([server.url, localhost], KEY, items_per_request=3, concurrency=4))
    scores = scorer.scores(conversations)
    assert scores.shape == (20, 5)
    assert scores[:, 0].tolist() == pytest.approx([r["pred_helpfulness"] for r in local], abs=1e-4)
    weights, name = scorer.weights("goodness", None)
    assert name == "goodness" and weights == pytest.approx((0.65, 0.8, 0.45, 0.0, 0.0))

    monkeypatch.setenv("HS2_RM_API_KEY", "wrong")
    started = time.monotonic()
    with pytest.raises(Hs2Error, match=r"reward server http://127.0.0.1:\d+: 401: .*HS2_RM_API_KEY"):
        RewardClient.from_env(server.url).info()
    assert time.monotonic() - started < 5


def test_every_consumer_scores_as_its_local_rm(server, tiny_rm_dir, tiny_lm_dir, tmp_path, monkeypatch):
    """The online RL reward, eval-policy's reward, iterative DPO's scoring and SteerLM 2.0's log P(a|x,y): a served RM
    gives what the same RM loaded here gives."""
    from hs2trl.evaluation.reward import RewardScorer
    from hs2trl.rm.reward_function import SteerLMReward
    from hs2trl.runtime.errors import Hs2Error

    monkeypatch.setenv("HS2_RM_API_KEY", KEY)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in ROWS[:6:2]] * 2
    completions = [[{"role": "assistant", "content": r["response"]}] for r in ROWS[:6]]
    for weights in (None, "1,0,0,0,1"):
        local = SteerLMReward.load(tiny_rm_dir, weights)(prompts=prompts, completions=completions)
        remote = SteerLMReward.load(url=server.url, weights=weights)(prompts=prompts, completions=completions)
        assert remote == pytest.approx(local, abs=1e-4)
    with pytest.raises(Hs2Error, match="no stored 'goodness' normalisation"):
        SteerLMReward.load(url=server.url, normalize=True)

    conversations = [p + c for p, c in zip(prompts, completions)]
    here, served_scorer = RewardScorer(tiny_rm_dir, None), RewardScorer(None, None, url=server.url)
    assert served_scorer.name == tiny_rm_dir  # the served model's name keys eval-policy's score cache
    assert served_scorer(conversations)[1] == pytest.approx(here(conversations)[1], abs=1e-4)

    from types import SimpleNamespace

    from hs2trl.runtime.resumable import KeyedLog
    from hs2trl.stages.iterative_dpo import IterativeArguments, score_round

    for name, source in (("local", {"reward_model_path": tiny_rm_dir}), ("remote", {"reward_url": server.url})):
        round_dir = tmp_path / name
        round_dir.mkdir()
        KeyedLog(round_dir / "generations.jsonl", key="id").append(
            [{"id": i, "prompt": p, "responses": [c[0]["content"], "No."]}
             for i, (p, c) in enumerate(zip(prompts[:3], completions[:3]))])
        score_round(round_dir, IterativeArguments(**source), SimpleNamespace(dtype="float32"))
    local_rows, remote_rows = (KeyedLog(tmp_path / n / "scores.jsonl", key="id").read() for n in ("local", "remote"))
    assert sorted(remote_rows) == [0, 1, 2]
    for i in range(3):
        assert remote_rows[i]["goodness"] == pytest.approx(local_rows[i]["goodness"], abs=1e-4)

    from hs2trl.steer.sampling import read_samples, sample_iteration

    steer_prompts = [{"id": i, "prompt": p, "attributes": dict(zip(ATTRS, [4, 4, 4, 2, 2]))}
                     for i, p in enumerate(prompts[:2])]
    common = dict(policy=tiny_lm_dir, sft_model=tiny_lm_dir, attributes=ATTRS, num_samples=2, temperature=0.7,
                  top_p=0.9, max_new_tokens=6, dtype="float32", seed=0)
    local_samples = read_samples(sample_iteration(steer_prompts, tmp_path / "s-local", reward_model=tiny_rm_dir,
                                                  **common))
    remote_samples = read_samples(sample_iteration(steer_prompts, tmp_path / "s-remote", reward_model=None,
                                                   reward_url=server.url, **common))
    for a, b in zip(local_samples, remote_samples):
        assert a["responses"] == b["responses"]
        assert b["attribute_logps"] == pytest.approx(a["attribute_logps"], abs=1e-3)


def test_steerlm_annotates_through_the_server(server, tiny_rm_dir, tmp_path, monkeypatch):
    from hs2trl.stages.steerlm import annotate

    monkeypatch.setenv("HS2_RM_API_KEY", KEY)
    data = write_jsonl(tmp_path / "sft.jsonl", ROWS[:6])
    here = annotate(data, "train", None, tiny_rm_dir, tmp_path / "local.jsonl", 4, 4, "float32")
    served_rows = annotate(data, "train", None, None, tmp_path / "remote.jsonl", 4, 4, "float32", server.url)
    assert [r.data["label_helpfulness"] for r in served_rows] == [r.data["label_helpfulness"] for r in here]
    assert [r.data["pred_coherence"] for r in served_rows] == pytest.approx([r.data["pred_coherence"] for r in here],
                                                                            abs=1e-4)


def test_a_failed_forward_pass_answers_500_and_the_server_goes_on(tiny_rm_dir):
    """In-process app over the tiny RM whose scoring call fails once: that request gets 500 (a JSON error naming no
    text), the next is answered, and the failure is counted in /metrics."""
    from fastapi.testclient import TestClient

    from hs2trl.rm.batcher import DynamicBatcher
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.server import Limits, create_app, load_service

    service = load_service(tiny_rm_dir, ["cpu"], None, Limits())
    real = service._scorer(load_reward_model(tiny_rm_dir))
    failures = [RuntimeError("CUDA out of memory (simulated)")]

    def flaky(sequences):
        if failures:
            raise failures.pop()
        return real(sequences)

    service.batcher.close()
    service.batcher = DynamicBatcher([flaky], max_batch_tokens=4096, max_wait_ms=0, max_queue=64,
                                     on_batch=service.metrics.batch)
    try:
        with TestClient(create_app(service, None)) as client:
            failed = client.post("/v1/score", json={"rows": ROWS[:2]})
            assert failed.status_code == 500
            assert failed.json() == {"error": "scoring failed (RuntimeError); the server goes on"}
            assert client.post("/v1/score", json={"rows": ROWS[:2]}).status_code == 200
            assert "hs2_rm_batch_errors_total 1.0" in client.get("/metrics").text
    finally:
        service.close()


def test_a_conversation_the_template_refuses_is_a_400(tiny_rm_dir):
    from fastapi.testclient import TestClient

    from hs2trl.rm.server import Limits, create_app, load_service

    service = load_service(tiny_rm_dir, ["cpu"], None, Limits())
    service.tokenizer.chat_template = (  # a template that enforces alternating roles, as Llama 2's and Mistral's do
        "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    try:
        with TestClient(create_app(service, None)) as client:
            answer = client.post("/v1/score", json={"conversations": [
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"},
                 {"role": "assistant", "content": "Hello"}]]})
            assert answer.status_code == 400
            assert answer.json()["error"] == ("item 1: the RM's chat template cannot render it (Conversation roles "
                                              "must alternate user/assistant/user/assistant/...)")
    finally:
        service.close()
