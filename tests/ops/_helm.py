"""Render this chart's templates without Helm (helper for the deployment tests).

Helm is not installable from the package registries this project uses, so the
tests render the templates with the small subset of Go templates the chart is
written in: `.Values`/`.Release`/`.Chart` paths, `if`/`else`/`end` (with `not`),
and the functions `quote`, `toYaml`, `nindent`, `indent`, `required` and
`default`, with `{{-`/`-}}` whitespace trimming. Anything else raises, so a
template that grows past the subset fails loudly instead of rendering wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+')


class TemplateError(Exception):
    """A template uses syntax outside the subset, or `required` failed."""


def _lookup(path: str, scope: dict[str, Any]) -> Any:
    if path == ".":
        return scope
    value: Any = scope
    for part in path.lstrip(".").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(spaces: int, text: str) -> str:
    pad = " " * int(spaces)
    return "\n".join(pad + line if line else line for line in str(text).split("\n"))


def _required(message: str, value: Any) -> Any:
    if value in (None, "", [], {}):
        raise TemplateError(message)
    return value


FUNCTIONS = {
    "quote": lambda value: json.dumps("" if value is None else _text(value)),
    "toYaml": _to_yaml,
    "nindent": lambda spaces, text: "\n" + _indent(spaces, text),
    "indent": _indent,
    "required": _required,
    "default": lambda fallback, value: value if value not in (None, "") else fallback,
    "not": lambda value: not value,
}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _atom(token: str, scope: dict[str, Any]) -> Any:
    if token.startswith('"'):
        return json.loads(token)
    if token.startswith("."):
        return _lookup(token, scope)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    raise TemplateError(f"unsupported argument {token!r}")


def _call(tokens: list[str], scope: dict[str, Any], piped: list[Any]) -> Any:
    head, *rest = tokens
    args = [_atom(token, scope) for token in rest] + piped
    if head in FUNCTIONS:
        return FUNCTIONS[head](*args)
    if args:
        raise TemplateError(f"unsupported function {head!r}")
    return _atom(head, scope)


def evaluate(expr: str, scope: dict[str, Any]) -> Any:
    """Evaluate one pipeline such as `.Values.x | quote`."""
    value: list[Any] = []
    for stage in expr.split("|"):
        tokens = _TOKEN.findall(stage)
        if "(" in tokens:
            raise TemplateError(f"parentheses are outside the subset: {expr!r}")
        value = [_call(tokens, scope, value)]
    return value[0]


def render(text: str, scope: dict[str, Any]) -> str:
    """Render one template file's text with `scope` (Values, Release, Chart)."""
    pieces: list[str] = []
    # Each frame: (emitting now, some branch of this if already taken).
    frames: list[tuple[bool, bool]] = []
    position = 0
    for match in _ACTION.finditer(text):
        literal = text[position : match.start()]
        if match.group(1):
            literal = literal.rstrip()
        if all(on for on, _ in frames):
            pieces.append(literal)
        position = match.end()
        if match.group(3):
            rest = text[position:]
            position += len(rest) - len(rest.lstrip())
        action = match.group(2)
        emitting = all(on for on, _ in frames)
        if action.startswith("/*"):
            continue
        if action.startswith("if "):
            taken = bool(evaluate(action[3:], scope)) if emitting else False
            frames.append((taken, taken))
        elif action == "else":
            _on, done = frames.pop()
            frames.append((not done, True))
        elif action == "end":
            frames.pop()
        elif re.match(r"(range|with|define|template|include|else if)\b", action):
            raise TemplateError(f"{action.split()[0]!r} is outside the subset")
        elif emitting:
            pieces.append(_text(evaluate(action, scope)))
    if frames:
        raise TemplateError("an `if` has no matching `end`")
    pieces.append(text[position:])
    return "".join(pieces)


def render_chart(
    chart_dir: Path, overrides: dict[str, Any], release: str = "adorch"
) -> dict[str, str]:
    """Render every template of a chart with values.yaml merged with `overrides`."""
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    _merge(values, overrides)
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    scope = {
        "Values": values,
        "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
    }
    return {
        path.name: render(path.read_text(), scope)
        for path in sorted((chart_dir / "templates").iterdir())
        if path.suffix in {".yaml", ".txt"}
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
