"""Teacher backed by any OpenAI-compatible chat-completions endpoint.

Reliability: bounded concurrency; retries with exponential backoff and jitter on 408/429/5xx,
timeouts and connection errors, honouring ``Retry-After``; an answer that is truncated, not JSON,
off-schema or fails the stage's own check is re-asked (with the error shown to the model) and
finally rejected with its reason. Valid answers are cached on disk keyed by the request hash, so a
killed run resumes without paying twice. The API key lives only inside the client: every message
that leaves this module goes through ``redact``.
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
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class _InvalidAnswer(Exception):
    pass


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
                       "http_errors": {}, "invalid_answers": 0, "rejected_requests": 0,
                       "prompt_tokens": 0, "completion_tokens": 0}
        self._cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None

    # ---- public ----
    def fingerprint(self) -> dict[str, Any]:
        return {"teacher": self.name, "model": self.cfg.model,
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens,
                "prompts": prompts.VERSION}

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

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
                    {"role": "assistant", "content": (content or "")[:4000]},
                    {"role": "user", "content": f"That answer was rejected: {last_reason}. "
                                                "Reply again with corrected JSON only."}]
                continue
            if path is not None:
                write_json(path, {"kind": kind, "answer": answer}, indent=None)
            return answer
        self._count("rejected_requests")
        raise TeacherError(f"{kind}: answer rejected after {int(self.cfg.max_invalid_retries) + 1}"
                           f" attempts: {last_reason}", retryable=False)

    def _parse(self, content: str | None, schema, validate, kind) -> dict:
        if content is None:
            raise _InvalidAnswer("truncated answer (finish_reason=length)")
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

    def _complete(self, kind: str, messages: list[dict], schema: dict) -> str | None:
        """One answer's text (None if cut by the token limit); transient failures are retried."""
        rng = random.Random(fingerprint(messages))  # jitter reproducible per request
        attempts = int(self.cfg.max_retries) + 1
        for attempt in range(attempts):
            wait = None
            try:
                with self._slots:
                    self._count("requests")
                    resp = self._client.chat.completions.create(
                        model=self.cfg.model, messages=messages,
                        temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                        response_format={"type": "json_schema", "json_schema": {
                            "name": kind, "schema": schema, "strict": bool(self.cfg.strict_schema)}})
                if resp.usage is not None:
                    self._count("prompt_tokens", resp.usage.prompt_tokens or 0)
                    self._count("completion_tokens", resp.usage.completion_tokens or 0)
                if not resp.choices:
                    return ""
                choice = resp.choices[0]
                if choice.finish_reason == "length":
                    return None
                return choice.message.content or ""
            except openai.APITimeoutError:
                self._count("timeouts")
                reason = "request timed out"
            except openai.APIConnectionError as e:
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
