"""A spec's text as it may be stored, logged or printed: every URL's password masked.

`StudySpec.redacted_text` (`search.spec.loader`) is `redacted`. The text is rebuilt from the parsed
YAML, not by a pattern over the raw text (where a quoted URL's password may hold a space, a quote
or '<'): each string value is masked and written back in place, quoted as YAML needs, so comments
and layout stay; a text that would not read back as the masked values is written out afresh.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from search.errors import SpecError
from search.spec.reader import parse
from search.urls import mask_text, mask_url

_URL_KEYS = ("storage", "tracking_uri")  # top-level keys whose value is a URL, whatever it holds
_STARTS_AS_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:")
_PROPERTIES = re.compile(r"(?:[&!]\S*\s+)*")  # an anchor or tag before a scalar's text


def _mask_value(value: str, url_key: bool) -> str:
    return mask_url(value) if url_key or _STARTS_AS_URL.match(value) else mask_text(value)


def redacted(text: str, path: Path) -> str:
    """`text` with every URL's password masked (see `StudySpec.redacted_text`)."""
    try:
        node, raw = parse(path, text)
    except SpecError:  # not a spec: mask what a pattern finds
        return mask_text(text)
    edits: list[tuple[int, int, str]] = []
    urls: list[str] = []
    seen: set[int] = set()

    def walk(item: Node | None, url_key: bool = False) -> None:
        if item is None or id(item) in seen:
            return
        seen.add(id(item))
        if isinstance(item, MappingNode):
            for key, value in item.value:
                walk(key)
                walk(value, item is node and isinstance(key, ScalarNode)
                     and key.value in _URL_KEYS)
        elif isinstance(item, SequenceNode):
            for value in item.value:
                walk(value)
        elif isinstance(item, ScalarNode) and item.tag == "tag:yaml.org,2002:str":
            masked = _mask_value(item.value, url_key)
            if masked != item.value:
                urls.append(item.value)
                start, end = item.start_mark.index, item.end_mark.index
                source = text[start:end]
                prefix = _PROPERTIES.match(source).group()
                tail = source[len(source.rstrip()):] if item.style in ("|", ">") else ""
                edits.append((start, end, prefix + _yaml_string(masked, item.style) + tail))

    walk(node)
    rebuilt = text
    for start, end, replacement in sorted(edits, reverse=True):
        rebuilt = rebuilt[:start] + replacement + rebuilt[end:]
    for url in urls:
        rebuilt = mask_text(rebuilt, url)
    rebuilt = _mask_comments(mask_text(rebuilt))
    expected = _mask_plain(raw, top=True)
    try:
        if parse(path, rebuilt)[1] == expected:
            return rebuilt
    except SpecError:
        pass
    dumped = yaml.safe_dump(expected, sort_keys=False, allow_unicode=True, width=1 << 16)
    for url in urls:
        dumped = mask_text(dumped, url)
    return mask_text(dumped)


def _mask_comments(text: str) -> str:
    """`text` with every URL in a comment masked as a whole URL: to the last '@' of its line
    (a commented-out ``storage:`` line keeps no password, spaces and quotes included)."""
    try:
        tokens = list(yaml.scan(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return text
    covered = [(token.start_mark.index, token.end_mark.index) for token in tokens]
    pieces, at = [], 0
    for sharp in re.finditer(r"(?:^|(?<=\s))#[^\r\n]*", text, re.MULTILINE):
        if any(start <= sharp.start() < end for start, end in covered):
            continue
        comment = sharp.group()
        for found in reversed(list(re.finditer(r"[A-Za-z][A-Za-z0-9+.-]*://", comment))):
            comment = comment[:found.start()] + mask_url(comment[found.start():])
        pieces += [text[at:sharp.start()], comment]
        at = sharp.end()
    return "".join(pieces) + text[at:]


def _mask_plain(value: Any, top: bool = False, url_key: bool = False) -> Any:
    """The parsed values with every string masked as `_redacted` masks its node."""
    if isinstance(value, dict):
        return {key: _mask_plain(item, url_key=top and key in _URL_KEYS)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_plain(item) for item in value]
    if isinstance(value, str):
        return _mask_value(value, url_key)
    return value


def _yaml_string(value: str, style: str | None) -> str:
    """`value` as a YAML scalar: plain or single-quoted as it was written when that reads back
    as the same string on one line, else double-quoted, escaping what is not printable."""
    if value.isprintable():
        if style is None and _reads_back(value):
            return value
        if style == "'":
            return "'" + value.replace("'", "''") + "'"
    return '"' + "".join(_escaped(c) for c in value) + '"'


def _escaped(char: str) -> str:
    """One character of a double-quoted YAML scalar: printable ones as they are (readable
    unicode), the rest (line breaks such as U+0085 and U+2028 included) as escapes."""
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    return json.dumps(char)[1:-1] if ord(char) < 0x80 else f"\\U{ord(char):08x}"


def _reads_back(value: str) -> bool:
    """`value`, written plain, is read back as itself (and not as a mapping, alias, comment)."""
    try:
        return value.strip() == value and ": " not in value and " #" not in value \
            and yaml.safe_load(value) == value
    except yaml.YAMLError:
        return False
