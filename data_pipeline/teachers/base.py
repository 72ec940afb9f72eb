"""The teacher interface and the error a stage turns into a rejected record."""
from __future__ import annotations

from typing import Any, Callable, Optional

Validator = Optional[Callable[[dict], None]]


class TeacherError(Exception):
    """A request that produced no usable answer.

    ``retryable`` marks transient causes (retries exhausted on 429/5xx/timeouts): a later run tries
    the document again. Non-retryable causes (a 4xx, answers that never validated) are final.
    """

    def __init__(self, reason: str, retryable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class Teacher:
    """Base class. Subclasses implement ``plan`` and ``notes``; ``classify`` is optional."""

    name = "teacher"
    coverage_method = "teacher"

    def fingerprint(self) -> dict[str, Any]:
        """What determines the answers; per-document artefacts made under another one are redone."""
        return {"teacher": self.name}

    def plan(self, doc: dict, num_streams: int, validate: Validator) -> dict:
        """A plan answer for ``doc`` (``schemas.plan_answer_schema``); ``validate`` raises ValueError
        on a semantically bad answer, which a teacher may retry."""
        raise NotImplementedError

    def notes(self, doc: dict, plan: dict, stream_index: int, stream_text: str,
              validate: Validator) -> dict:
        """One stream's notes answer (``schemas.NOTES_ANSWER``) for ``stream_text``."""
        raise NotImplementedError

    def classify(self, doc: dict) -> dict:
        """Quality verdict ``{keep, reason}`` for preflight."""
        raise TeacherError(f"the {self.name} teacher has no quality classifier; set "
                           "preflight.llm_classifier=False or use the openai teacher")

    def confirms_coverage(self) -> bool:
        """Whether this teacher's coverage statuses are confirmed by construction."""
        return False

    def report(self) -> dict[str, Any]:
        """Usage figures for the stage report (tokens, cost, retries...)."""
        return {}

    def close(self) -> None:
        pass
