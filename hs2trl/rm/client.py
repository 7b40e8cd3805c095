"""The client of `hs2 serve-rm`: conversations -> the served RM's attribute predictions, over HTTP.

Requests of `items_per_request` conversations go out concurrently (a thread pool over one `httpx.Client`, which pools
connections) and are spread over the URLs round-robin; a retry moves on to the next URL. 503 (the server's queue is
full), 502/504 and connection errors are retried with jittered exponential backoff by tenacity for up to
`retry_seconds` (env `HS2_RM_RETRY_SECONDS`, default 120); then, and at once for any other error (401, 400, 413,
500), the call fails in one line naming the server and what it said. Answers come back in input order.

The key is read from an environment variable (never a command-line value) and sent as `Authorization: Bearer`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from hs2trl.runtime.errors import Hs2Error

DEFAULT_KEY_ENV = "HS2_RM_API_KEY"
RETRY_ENV, DEFAULT_RETRY_SECONDS = "HS2_RM_RETRY_SECONDS", 120.0
RETRY_STATUSES = (502, 503, 504)


class ServerBusy(Exception):
    """A retryable answer (502, 503, 504)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class Scored(NamedTuple):
    scores: list[list[float]]  # [N][k], in the order of the served model's `attributes`
    truncated: int  # conversations the server cut from the left to its (or the request's) token limit


def parse_urls(spec: str | Sequence[str]) -> list[str]:
    """`URL[,URL...]` -> base URLs without a trailing slash; one line for anything that is not http(s)."""
    urls = [u.strip().rstrip("/") for u in (spec.split(",") if isinstance(spec, str) else spec) if u.strip()]
    if not urls:
        raise Hs2Error("--reward-url: no URL given")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise Hs2Error(f"--reward-url {url}: expected http://HOST:PORT (an `hs2 serve-rm` server)")
    return urls


def api_key_from_env(env: str | None) -> str | None:
    return os.environ.get(env or DEFAULT_KEY_ENV) or None


class RewardClient:
    """One or more `hs2 serve-rm` servers of the same reward model."""

    def __init__(self, urls: str | Sequence[str], api_key: str | None = None, *, key_env: str = DEFAULT_KEY_ENV,
                 items_per_request: int = 32, concurrency: int = 8, timeout: float = 600.0,
                 retry_seconds: float | None = None):
        import httpx

        self.urls = parse_urls(urls)
        self.key_env = key_env
        self.items_per_request, self.concurrency = max(1, items_per_request), max(1, concurrency)
        if retry_seconds is None:
            retry_seconds = float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_SECONDS))
        self.retry_seconds = retry_seconds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency * len(self.urls))
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), limits=limits)
        self._info: dict | None = None
        self._waiting = False  # a retry line was printed and no call has succeeded since

    @classmethod
    def from_env(cls, urls: str | Sequence[str], key_env: str | None = None, **kwargs) -> RewardClient:
        key_env = key_env or DEFAULT_KEY_ENV
        return cls(urls, api_key_from_env(key_env), key_env=key_env, **kwargs)

    @property
    def name(self) -> str:
        return ",".join(self.urls)

    def close(self) -> None:
        self._http.close()

    # -- calls

    def info(self) -> dict:
        """The served model (`GET /v1/model` of each URL, which must all serve the same outputs)."""
        if self._info is None:
            answers = [self._call("GET", i, "/v1/model") for i in range(len(self.urls))]
            first = answers[0]
            for url, other in zip(self.urls[1:], answers[1:]):
                if other.get("attributes") != first.get("attributes"):
                    raise Hs2Error(f"--reward-url: {url} serves outputs {other.get('attributes')}, {self.urls[0]} "
                                   f"{first.get('attributes')}: every URL must serve the same reward model")
            self._info = first
        return self._info

    def score(self, conversations: Sequence[Sequence[dict]], max_length: int | None = None, progress: bool = False,
              desc: str = "Scoring (remote)") -> Scored:
        """The attribute predictions of each conversation, in order."""
        from tqdm.auto import tqdm

        attributes = self.info()["attributes"]
        n = self.items_per_request
        chunks = [list(conversations[i : i + n]) for i in range(0, len(conversations), n)]

        def one(j: int) -> tuple[list[list[float]], int]:
            body = {"conversations": [list(c) for c in chunks[j]]}
            if max_length:
                body["max_length"] = int(max_length)
            answer = self._call("POST", j, "/v1/score", body)
            rows = [[float(r["attributes"][a]) for a in attributes] for r in answer["results"]]
            if len(rows) != len(chunks[j]):
                raise Hs2Error(f"reward server: answered {len(rows)} results for {len(chunks[j])} conversations")
            return rows, int(answer.get("truncated", 0))

        scores, truncated = [], 0
        with ThreadPoolExecutor(self.concurrency) as pool, tqdm(total=len(conversations), desc=desc,
                                                                 disable=not progress, unit="conv") as bar:
            try:
                for rows, cut in pool.map(one, range(len(chunks))):  # map keeps the input order
                    scores += rows
                    truncated += cut
                    bar.update(len(rows))
            except BaseException:  # a failed request or Ctrl-C: the requests not yet sent are not sent
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return Scored(scores, truncated)

    # -- one HTTP call, retried

    def _call(self, method: str, first_url: int, path: str, body: dict | None = None) -> dict:
        import httpx
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

        started, tries, last_url = time.monotonic(), 0, self.urls[first_url % len(self.urls)]

        def tell_once(state) -> None:  # one line while the servers are away (not one per request in flight)
            if not self._waiting:
                self._waiting = True
                err = state.outcome.exception()
                print(f"hs2: reward server {last_url}: {type(err).__name__}; retrying for up to "
                      f"{self.retry_seconds:.0f}s (${RETRY_ENV})", file=sys.stderr, flush=True)

        retrying = Retrying(retry=retry_if_exception_type((httpx.TransportError, ServerBusy)),
                            wait=wait_exponential_jitter(initial=0.25, max=8.0),
                            stop=stop_after_delay(self.retry_seconds), before_sleep=tell_once, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    last_url = self.urls[(first_url + tries) % len(self.urls)]  # a retry tries the next server
                    tries += 1
                    answer = self._answer(last_url, self._http.request(method, last_url + path, json=body))
                    self._waiting = False
                    return answer
        except httpx.TransportError as err:
            raise Hs2Error(f"reward server {last_url}: unreachable ({type(err).__name__}: {err or 'no answer'}); "
                           f"gave up after {tries} tries over {time.monotonic() - started:.0f}s") from None
        except ServerBusy as err:
            raise Hs2Error(f"reward server {last_url}: still busy ({err}) after {tries} tries over "
                           f"{time.monotonic() - started:.0f}s") from None
        raise AssertionError("unreachable")  # tenacity either returns or raises

    def _answer(self, url: str, response) -> dict:
        if response.status_code == 200:
            return response.json()
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text.strip()[:200]
        if response.status_code in RETRY_STATUSES:
            raise ServerBusy(response.status_code, message)
        hint = ""
        if response.status_code == 401:
            hint = f" (the key is read from ${self.key_env}: set it, or name another variable with " \
                   "--reward-api-key-env)"
        raise Hs2Error(f"reward server {url}: {response.status_code}: {message}{hint}")
