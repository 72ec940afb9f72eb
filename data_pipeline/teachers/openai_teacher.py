"""Teacher backed by any OpenAI-compatible chat-completions endpoint.

Reliability: bounded concurrency; retries with exponential backoff and jitter on 408/429/5xx,
timeouts, connection errors and malformed responses (a body that is not UTF-8 JSON, or not a chat
completion: ``choices`` not a list, a choice without a message, ...), honouring ``Retry-After``
(a value that is neither seconds nor a date is ignored); ``timeout_s`` is a deadline for the whole
request, not only between two bytes, so a server that drips its answer is cut off. An answer that
is truncated, not a JSON string, not JSON, off-schema or fails the stage's own check is re-asked
(with the error shown to the model) and finally rejected with its reason. Valid answers are cached
on disk keyed by the request hash, so a killed run resumes without paying twice. The API key lives
only inside the client: every message that leaves this module goes through ``redact`` — the
server's answers included, before they are parsed, cached or returned.
"""
from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import openai

from data_pipeline import prompts, schemas
from data_pipeline.storage import fingerprint, read_json, write_json
from data_pipeline.teachers.base import Teacher, TeacherError, Validator

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


def load_api_key(env_name: str, dotenv_path: str | None) -> str:
    """The key from the environment, else from a ``.env`` file (``KEY=value`` lines)."""
    key = os.environ.get(env_name)
    if key:
        return key
    if dotenv_path and Path(dotenv_path).is_file():
        for line in Path(dotenv_path).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line.startswith("export "):
                line = line[len("export "):].strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            name, value = line.split("=", 1)
            if name.strip() == env_name:
                return value.strip().strip("'\"")
    raise TeacherError(f"no API key: set the {env_name} environment variable or put "
                       f"{env_name}=... in {dotenv_path or '.env'}")


def _retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # neither seconds nor an HTTP date ("soon"): our own backoff applies
    return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class _InvalidAnswer(Exception):
    pass


class _Malformed(Exception):
    """The HTTP answer is not a chat completion we can read (a transient server fault)."""


class _Deadline(Exception):
    pass


def _completion_parts(body: bytes) -> tuple[Any, str | None, dict]:
    """(message content, finish_reason, usage) of a chat-completion body, checking its shape."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _Malformed(f"response body is not UTF-8 (byte {body[e.start]:#04x} at {e.start})") from None
    except json.JSONDecodeError as e:
        raise _Malformed(f"response body is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(data, dict):
        raise _Malformed(f"response body is a JSON {type(data).__name__}, expected an object")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise _Malformed(f"field 'choices' is {type(choices).__name__}, expected a list")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    if not choices:
        return "", None, usage
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise _Malformed("choices[0] has no 'message' object")
    return choice["message"].get("content"), choice.get("finish_reason"), usage


class OpenAITeacher(Teacher):
    name = "openai"
    coverage_method = "teacher_llm"

    def __init__(self, cfg):
        self.cfg = cfg
        self._key = load_api_key(cfg.api_key_env, cfg.dotenv_path)
        self._client = openai.OpenAI(base_url=cfg.base_url, api_key=self._key, max_retries=0,
                                     timeout=cfg.timeout_s)
        self._slots = threading.BoundedSemaphore(max(1, int(cfg.concurrency)))
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "cache_hits": 0, "retries": 0, "timeouts": 0,
                       "http_errors": {}, "invalid_answers": 0, "malformed_responses": 0,
                       "rejected_requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None

    # ---- public ----
    def fingerprint(self) -> dict[str, Any]:
        return {"teacher": self.name, "model": self.cfg.model,
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens,
                "prompts": prompts.VERSION}

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _redact_bytes(self, body: bytes) -> bytes:
        key = self._key.encode("utf-8") if self._key else b""
        return body.replace(key, b"***") if key else body

    def plan(self, doc: dict, num_streams: int, validate: Validator) -> dict:
        return self._ask("plan", prompts.plan_messages(doc, num_streams),
                         schemas.plan_answer_schema(num_streams), validate)

    def notes(self, doc, plan, stream_index, stream_text, validate: Validator) -> dict:
        return self._ask("notes", prompts.notes_messages(doc, plan, stream_index, stream_text),
                         schemas.NOTES_ANSWER, validate)

    def classify(self, doc: dict) -> dict:
        return self._ask("quality", prompts.quality_messages(doc), schemas.QUALITY_ANSWER, None)

    def report(self) -> dict[str, Any]:
        with self._lock:
            stats = json.loads(json.dumps(self._stats))
        stats["cost_usd"] = round(
            stats["prompt_tokens"] / 1e6 * self.cfg.prompt_price_per_mtok
            + stats["completion_tokens"] / 1e6 * self.cfg.completion_price_per_mtok, 6)
        stats["model"] = self.cfg.model
        return stats

    def close(self) -> None:
        self._client.close()

    # ---- internals ----
    def _count(self, field: str, n: int = 1, sub: str | None = None) -> None:
        with self._lock:
            if sub is None:
                self._stats[field] += n
            else:
                self._stats[field][sub] = self._stats[field].get(sub, 0) + n

    def _cache_path(self, key: str) -> Path | None:
        return self._cache_dir / key[:2] / f"{key}.json" if self._cache_dir else None

    def _ask(self, kind: str, messages: list[dict], schema: dict, validate: Validator) -> dict:
        request = {"model": self.cfg.model, "messages": messages, "schema": schema,
                   "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        key = fingerprint(request)
        path = self._cache_path(key)
        if path is not None and path.exists():
            cached = read_json(path)
            try:  # the stage's check may be stricter than when the answer was cached
                self._check(cached["answer"], schema, validate, kind)
                self._count("cache_hits")
                return cached["answer"]
            except _InvalidAnswer:
                pass
        convo = list(messages)
        last_reason = "no answer"
        for invalid_round in range(int(self.cfg.max_invalid_retries) + 1):
            content = self._complete(kind, convo, schema)
            try:
                answer = self._parse(content, schema, validate, kind)
            except _InvalidAnswer as e:
                self._count("invalid_answers")
                last_reason = self.redact(str(e))
                convo = list(messages) + [
                    {"role": "assistant", "content": ("" if content is None else content if isinstance(content, str)
                                                      else json.dumps(content))[:4000]},
                    {"role": "user", "content": f"That answer was rejected: {last_reason}. "
                                                "Reply again with corrected JSON only."}]
                continue
            if path is not None:
                write_json(path, {"kind": kind, "answer": answer}, indent=None)
            return answer
        self._count("rejected_requests")
        raise TeacherError(f"{kind}: answer rejected after {int(self.cfg.max_invalid_retries) + 1}"
                           f" attempts: {last_reason}", retryable=False)

    def _parse(self, content, schema, validate, kind) -> dict:
        if content is None:
            raise _InvalidAnswer("truncated answer (finish_reason=length)")
        if not isinstance(content, str):
            raise _InvalidAnswer(f"the message content is a JSON {type(content).__name__}, expected a string "
                                 f"holding the JSON answer")
        try:
            answer = json.loads(content)
        except json.JSONDecodeError as e:
            raise _InvalidAnswer(f"not valid JSON ({e.msg} at char {e.pos})") from None
        self._check(answer, schema, validate, kind)
        return answer

    @staticmethod
    def _check(answer, schema, validate, kind) -> None:
        try:
            schemas.validate(answer, schema, f"{kind} answer")
            if validate is not None:
                validate(answer)
        except ValueError as e:
            raise _InvalidAnswer(str(e)) from None

    def _post(self, kind: str, messages: list[dict], schema: dict) -> bytes:
        """The raw answer body, read within the request's deadline, the key scrubbed."""
        deadline = time.monotonic() + float(self.cfg.timeout_s)
        body = bytearray()
        with self._client.chat.completions.with_streaming_response.create(
                model=self.cfg.model, messages=messages,
                temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                response_format={"type": "json_schema", "json_schema": {
                    "name": kind, "schema": schema, "strict": bool(self.cfg.strict_schema)}}) as raw:
            for chunk in raw.iter_bytes():
                body += chunk
                if time.monotonic() > deadline:
                    raise _Deadline()
                if len(body) > self.cfg.max_response_bytes:
                    raise _Malformed(f"response larger than max_response_bytes={self.cfg.max_response_bytes}")
        return self._redact_bytes(bytes(body))

    def _complete(self, kind: str, messages: list[dict], schema: dict):
        """One answer's content (None if cut by the token limit; possibly not a string, which the
        caller rejects as an answer); transient failures are retried."""
        rng = random.Random(fingerprint(messages))  # jitter reproducible per request
        attempts = int(self.cfg.max_retries) + 1
        for attempt in range(attempts):
            wait = None
            try:
                with self._slots:
                    self._count("requests")
                    body = self._post(kind, messages, schema)
                content, finish, usage = _completion_parts(body)
                for field, name in (("prompt_tokens", "prompt_tokens"), ("completion_tokens", "completion_tokens")):
                    n = usage.get(name)
                    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
                        self._count(field, n)
                if finish == "length":
                    return None
                return "" if content is None else content
            except (openai.APITimeoutError, _Deadline, httpx2.TimeoutException):
                self._count("timeouts")
                reason = f"request timed out (deadline timeout_s={self.cfg.timeout_s})"
            except _Malformed as e:
                self._count("malformed_responses")
                reason = f"malformed response: {self.redact(str(e))}"
            except (openai.APIConnectionError, httpx2.TransportError) as e:  # (the body is read outside openai's wrapper)
                reason = f"connection error: {type(e).__name__}"
            except openai.APIStatusError as e:
                self._count("http_errors", sub=str(e.status_code))
                reason = f"HTTP {e.status_code}: {self.redact(str(e))[:300]}"
                if e.status_code not in RETRYABLE_STATUS:
                    self._count("rejected_requests")
                    raise TeacherError(f"{kind}: {reason}", retryable=False) from None
                wait = _retry_after(e.response.headers if e.response is not None else None)
            if attempt + 1 == attempts:
                break
            self._count("retries")
            delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** attempt)
            delay *= 1.0 + self.cfg.jitter * (2.0 * rng.random() - 1.0)
            if wait is not None:
                delay = min(max(wait, 0.0), self.cfg.retry_after_max_s)
            time.sleep(max(0.0, delay))
        self._count("rejected_requests")
        raise TeacherError(f"{kind}: gave up after {attempts} attempts: {reason}", retryable=True)
