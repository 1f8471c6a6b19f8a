"""Chat JSONL (`{"messages": [{"role", "content"}, ...]}`) reading with validation that names file and line."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

ROLES = {"system", "user", "assistant"}


def validate_messages(messages, file: str, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ConfigError("'messages' must be a non-empty list", file=file, where=where)
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(
                f"messages[{j}] must be {{role: system|user|assistant, content: str}}, got {str(m)[:80]!r}",
                file=file, where=where,
            )
    if messages[-1]["role"] != "assistant":
        raise ConfigError("the last message must be an assistant turn", file=file, where=where)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _rows(path: Path, file: str):
    """(line number, parsed JSON) for every non-blank line; invalid JSON is an error naming file and line."""
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield ln, json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"invalid JSON: {e.msg}", file=file, where=f"line {ln}") from None


def read_jsonl(path: str | Path) -> list[list[dict]]:
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise ConfigError("dataset file does not exist", file=file)
    out = []
    for ln, row in _rows(path, file):
        if not isinstance(row, dict) or "messages" not in row:
            raise ConfigError("row has no 'messages' field", file=file, where=f"line {ln}")
        out.append(validate_messages(row["messages"], file, f"line {ln}"))
    if not out:
        raise ConfigError("dataset is empty", file=file)
    return out


def read_first_user_turns(path: str | Path, where_field: str = "distill.general_prompts") -> list[str]:
    """The first user turn of every conversation of a chat JSONL (assistant turns, if any, are ignored): extra
    general prompts for distillation. Errors name file and line."""
    path = Path(path).expanduser()
    file = str(path)
    if not path.exists():
        raise ConfigError("prompt file does not exist", file=file, where=where_field)
    out = []
    for ln, row in _rows(path, file):
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list):
            raise ConfigError("row has no 'messages' list", file=file, where=f"line {ln}")
        user = next((m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"), None)
        if not isinstance(user, str) or not user.strip():
            raise ConfigError("no non-empty user turn in 'messages'", file=file, where=f"line {ln}")
        out.append(user.strip())
    if not out:
        raise ConfigError("prompt file is empty", file=file, where=where_field)
    return out
