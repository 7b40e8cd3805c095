"""The LLM judge: any OpenAI-compatible chat-completions endpoint, asked concurrently, every answer kept on disk.

The key is read from an environment variable and lives only in this process's memory: it is never written to an
output, a log line or an error message (errors name the endpoint, the status and the server's short reason).
Retries with backoff on 408/409/429/5xx and time-outs are the `openai` client's own (`max_retries`).

Judgments go to a JSON-lines log, one record per question (and turn or game) as soon as it arrives, so an
interrupted run keeps what it paid for. A rerun reads the log and asks only what is missing or failed: a record with
no parsed verdict (an unparsable reply, or an error after the retries) is asked again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.resumable import KeyedLog

OPENAI_BASE_URL = "https://api.openai.com/v1"


class JudgeError(Exception):
    """One judge call failed after the client's retries (recorded, counted, asked again on a rerun)."""


def public_url(url: str) -> str:
    """The endpoint without any user:password part (the only form that is printed or written)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_KEY_LIKE = re.compile(r"\b(sk|hf|key)-[A-Za-z0-9*_\-]{4,}")


def describe_error(err: Exception, secret: str | None = None) -> str:
    """A short reason for a failed call: the error class, the HTTP status and the server's message, with the key and
    anything key-like masked (some servers echo part of a rejected key)."""
    status = getattr(err, "status_code", None)
    body = getattr(err, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if not message:
        lines = str(err).strip().splitlines()
        message = lines[0] if lines else ""
    if secret:
        message = message.replace(secret, "***")
    message = _KEY_LIKE.sub(r"\1-***", message)
    return type(err).__name__ + (f" {status}" if status else "") + (f": {message[:200]}" if message else "")


@dataclass
class JudgeSettings:
    model: str
    base_url: str = OPENAI_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 6
    timeout: float = 300.0


class Judge:
    """A chat-completions client for one endpoint. `model` is the default judge; a benchmark may name its own."""

    def __init__(self, settings: JudgeSettings):
        from openai import OpenAI

        key = os.environ.get(settings.api_key_env)
        if not key:
            raise Hs2Error(
                f"the judge needs an API key in ${settings.api_key_env} (for a server without authentication, set it "
                f"to any value, e.g. {settings.api_key_env}=EMPTY)"
            )
        self.settings = settings
        self._secret = key
        self.url = public_url(settings.base_url)
        self._client = OpenAI(api_key=key, base_url=settings.base_url, max_retries=settings.max_retries,
                              timeout=settings.timeout)

    def check_reachable(self) -> None:
        """One cheap request (GET /models): an unreachable endpoint or a rejected key is one line, before any work."""
        import openai

        try:
            self._client.with_options(max_retries=1, timeout=20).models.list()
        except openai.NotFoundError:
            return  # a server without /models is still a server
        except openai.AuthenticationError as err:
            raise Hs2Error(f"judge at {self.url}: the key in ${self.settings.api_key_env} was rejected "
                           f"({describe_error(err, self._secret)})") from None
        except openai.APIConnectionError as err:
            raise Hs2Error(f"judge at {self.url} is unreachable ({describe_error(err, self._secret)}); "
                           "check --judge-base-url") from None
        except openai.APIStatusError as err:
            raise Hs2Error(f"judge at {self.url} answered an error ({describe_error(err, self._secret)})") from None

    def complete(self, messages: list[dict], model: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 2048, **extra) -> dict:
        """The first choice of the reply as a dict (`message`, `logprobs` when asked for), plus its `text`; retried by
        the client on 408/409/429/5xx and time-outs, then a `JudgeError`."""
        import openai

        try:
            reply = self._client.chat.completions.create(model=model or self.settings.model, messages=messages,
                                                         temperature=temperature, max_tokens=max_tokens, **extra)
        except openai.OpenAIError as err:
            raise JudgeError(describe_error(err, self._secret)) from None
        if not getattr(reply, "choices", None):
            raise JudgeError("the reply has no choices")
        choice = reply.choices[0].model_dump()
        choice["text"] = reply.choices[0].message.content or ""
        return choice

    def chat(self, messages: list[dict], model: str | None = None, temperature: float = 0.0,
             max_tokens: int = 2048) -> str:
        """The judge's reply text."""
        return self.complete(messages, model, temperature, max_tokens)["text"]


def run_judgments(log: KeyedLog, jobs: dict[str, Callable[[], dict]], concurrency: int,
                  is_done: Callable[[dict], bool], desc: str) -> dict[str, dict]:
    """Run the jobs whose key has no finished record in the log, `concurrency` at a time; each job returns its record
    (a failed call is a record too, never an exception). Returns {key: record} for every job, old and new."""
    from tqdm.auto import tqdm

    records = log.load()
    todo = [k for k in jobs if not (k in records and is_done(records[k]))]
    if todo:
        pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
        try:
            with tqdm(total=len(todo), desc=desc, unit="call") as bar:
                futures = {pool.submit(jobs[k]): k for k in todo}
                for future in as_completed(futures):
                    key = futures[future]
                    record = {"key": key, **future.result()}
                    log.append([record])
                    records[key] = record
                    bar.update(1)
        finally:  # Ctrl-C: calls not yet started are dropped, not made (what arrived is on disk)
            pool.shutdown(wait=True, cancel_futures=True)
        log.compact(jobs)
    return {k: records[k] for k in jobs}
