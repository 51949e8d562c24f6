"""Alertmanager's label matchers (`alertname="HighErrorRate"`, `severity=~"critical|page"`), so
people can copy rules from their Alertmanager routes.

Semantics follow Alertmanager: `=`, `!=`, `=~`, `!~`; regular expressions are fully anchored
(`=~"crit"` does not match `critical`); a missing label is the empty string (`team=""` matches
an alert without `team`). One string may hold several comma-separated matchers, optionally in
braces (`{service="web", env!="dev"}`), as Alertmanager's own parser accepts. Values may be
double-quoted (with `\\"`, `\\\\` and `\\n` escapes) or bare.

Pure and deterministic: the config loader validates with it, the decision policy matches with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

OPERATORS = ("=~", "!~", "!=", "=")  # longest first, so `=~` is not read as `=` + `~…`
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.:-]*|\"(?:[^\"\\]|\\.)*\")\s*")


class MatcherError(ValueError):
    """A matcher that cannot be parsed; the message says which one and why."""


@dataclass(frozen=True)
class Matcher:
    name: str
    operator: str
    value: str
    pattern: re.Pattern | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.operator == "=":
            return actual == self.value
        if self.operator == "!=":
            return actual != self.value
        found = self.pattern.fullmatch(actual) is not None  # type: ignore[union-attr]
        return found if self.operator == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.operator}"{escaped}"'


def _unquote(text: str, whole: str) -> str:
    """The value of a double-quoted string that must end exactly at its closing quote."""
    out, i = [], 1
    while i < len(text):
        char = text[i]
        if char == '"':
            if i != len(text) - 1:
                raise MatcherError(f"{whole.strip()!r}: unexpected text after the closing quote")
            return "".join(out)
        if char == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if nxt not in ('"', "\\", "n"):
                raise MatcherError(f"{whole.strip()!r}: unknown escape \\{nxt} in a quoted value")
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        out.append(char)
        i += 1
    raise MatcherError(f"{whole.strip()!r}: a quoted value is not closed")


def _split(text: str) -> list[str]:
    """Comma-separated matchers; commas inside quotes belong to the value."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise MatcherError(f"{text!r}: a quoted value is not closed")
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _one(text: str) -> Matcher:
    name_match = _NAME.match(text)
    if not name_match:
        raise MatcherError(f"{text.strip()!r}: expected a label name first, like alertname=\"HighErrorRate\"")
    name = name_match.group(1)
    if name.startswith('"'):
        name = _unquote(name, text)
    rest = text[name_match.end():]
    operator = next((op for op in OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise MatcherError(f"{text.strip()!r}: expected one of =, !=, =~, !~ after {name!r}")
    raw = rest[len(operator):].strip()
    if raw.startswith('"'):
        value = _unquote(raw, text)
    else:
        if '"' in raw:
            raise MatcherError(f"{text.strip()!r}: a stray quote in an unquoted value")
        value = raw
    pattern = None
    if operator in ("=~", "!~"):
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise MatcherError(f"{text.strip()!r}: invalid regular expression: {exc}") from None
    return Matcher(name, operator, value, pattern)


@lru_cache(maxsize=1024)
def parse_matchers(text: str) -> tuple[Matcher, ...]:
    """All matchers in one config string; MatcherError when any is malformed."""
    inner = text.strip()
    if inner.startswith("{"):
        if not inner.endswith("}"):
            raise MatcherError(f"{text!r}: opening brace without a closing one")
        inner = inner[1:-1]
    matchers = tuple(_one(part) for part in _split(inner))
    if not matchers:
        raise MatcherError(f"{text!r}: no matcher in it")
    return matchers


def all_match(texts: list[str], labels: dict[str, str]) -> bool:
    """True when every matcher in every string matches `labels` (no matchers: everything matches)."""
    return all(m.matches(labels) for text in texts for m in parse_matchers(text))
