"""JSON: parsed as JSON, not as text. Every string value becomes text with its
key path (`$[0].paragraphs[3]`) in the chunk metadata; an object with a
title-like key (title, name, chapter, ...) opens a section named by it, so a
chapter's text carries the chapter in its heading path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from services.worker.documents.blocks import Block, DocumentInfo, HeadingTracker
from services.worker.documents.decoding import read_all_text
from services.worker.documents.errors import CorruptFile

_LABEL_KEYS = ("title", "name", "chapter", "heading", "section", "subject", "标题", "名称", "章节")
MAX_DEPTH = 64


def parse_json(handle: IO[bytes], info: DocumentInfo) -> Iterator[Block]:
    text, encoding = read_all_text(handle)
    info.metadata["encoding"] = encoding
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"the file is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CorruptFile("the JSON is nested too deeply") from None
    del text
    yield from _walk(value, "$", HeadingTracker(), 0)


def _walk(value: Any, path: str, headings: HeadingTracker, depth: int) -> Iterator[Block]:
    if depth > MAX_DEPTH:
        return
    if isinstance(value, dict):
        label_key = next((k for k in _LABEL_KEYS if isinstance(value.get(k), str) and value[k].strip()), None)
        if label_key is not None:
            label = value[label_key].strip()
            yield Block(label, kind="heading", heading_path=headings.enter(depth + 1, label), section_break=True,
                        meta={"json_path": f"{path}.{label_key}"})
        for key, item in value.items():
            if key != label_key:
                yield from _walk(item, f"{path}.{key}" if _plain(key) else f"{path}[{json.dumps(key)}]",
                                 headings, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]", headings, depth + 1)
    elif isinstance(value, str) and value.strip():
        yield Block(value, kind="value", heading_path=headings.path, meta={"json_path": path})


def _plain(key: str) -> bool:
    return key.isidentifier()
