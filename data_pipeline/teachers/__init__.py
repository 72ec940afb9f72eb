"""Teachers answer the pipeline's two questions (a plan for a document, notes for one stream).

``procedural`` works offline from the document's structure; ``openai`` asks any OpenAI-compatible
chat-completions endpoint. Both return answers in the shapes of ``schemas.plan_answer_schema`` and
``schemas.NOTES_ANSWER``, so the stages never know which teacher they talk to.
"""
from __future__ import annotations

from data_pipeline.teachers.base import Teacher, TeacherError


def make_teacher(config) -> Teacher:
    """The teacher named by ``config.teacher.kind``."""
    kind = config.teacher.kind
    if kind == "procedural":
        from data_pipeline.teachers.procedural import ProceduralTeacher
        return ProceduralTeacher()
    if kind == "openai":
        from data_pipeline.teachers.openai_teacher import OpenAITeacher
        return OpenAITeacher(config.teacher.openai)
    raise ValueError(f"unknown teacher kind {kind!r} (use 'procedural' or 'openai')")


__all__ = ["Teacher", "TeacherError", "make_teacher"]
