"""Reading the runtime's input files (seed README "Inference Quickstart"), with errors that name
the file, the line or key, and what was expected."""
from __future__ import annotations

import json
import os


class InputError(ValueError):
    pass


def _load_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} {path!r}: file not found") from None
    except OSError as e:  # a directory, no permission, ...
        raise InputError(f"{what} {path!r}: cannot be read as a file ({e.strerror or e})") from None
    except ValueError as e:
        raise InputError(f"{what} {path}: not valid JSON ({e})") from e


def stream_map(path: str, what: str, streams) -> dict[str, str]:
    """A JSON object {stream name: text} (stream prefixes, seed texts, notes texts)."""
    data = _load_json(path, what)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InputError(f"{what} {path}: expected a JSON object mapping stream names to strings")
    unknown = sorted(set(data) - set(streams))
    if unknown:
        raise InputError(f"{what} {path}: unknown stream(s) {unknown}; valid streams: {list(streams)}")
    return data


def plan_catalog(path: str, streams, max_items: int) -> list[dict]:
    """``--plan-text-file``: {stream: [item, ...]} or [{"stream": s, "text": t}, ...] → catalog."""
    data = _load_json(path, "--plan-text-file")
    items = []
    if isinstance(data, dict):
        for s, texts in data.items():
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise InputError(f"--plan-text-file {path}: key {s!r}: expected a list of strings")
            items += [{"stream": s, "text": t} for t in texts]
    elif isinstance(data, list):
        for i, it in enumerate(data):
            if not isinstance(it, dict) or not isinstance(it.get("text"), str):
                raise InputError(f"--plan-text-file {path}: item {i}: expected {{\"stream\": ..., \"text\": ...}}")
            items.append({"stream": it.get("stream"), "text": it["text"]})
    else:
        raise InputError(f"--plan-text-file {path}: expected a JSON object or list")
    unknown = sorted({it["stream"] for it in items if it["stream"] is not None} - set(streams))
    if unknown:
        raise InputError(f"--plan-text-file {path}: unknown stream(s) {unknown}; valid streams: {list(streams)}")
    if len(items) > max_items:
        raise InputError(f"--plan-text-file {path}: {len(items)} plan items, the planner has {max_items} slots")
    return [dict(it, index=i) for i, it in enumerate(items)]


def prompts_file(path: str) -> list[str]:
    """``--prompts-file``: JSONL with {"prompt": ...} per line (or a bare JSON string per line)."""
    if not os.path.exists(path):
        raise InputError(f"--prompts-file {path!r}: file not found")
    if not os.path.isfile(path):
        raise InputError(f"--prompts-file {path!r}: expected a JSONL file, found a directory or special file")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InputError(f"{path}:{n}: malformed JSON line ({e})") from e
            text = obj.get("prompt") if isinstance(obj, dict) else obj
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{path}:{n}: expected {{\"prompt\": \"...\"}} with a non-empty string")
            prompts.append(text)
    if not prompts:
        raise InputError(f"--prompts-file {path}: no prompts")
    return prompts
