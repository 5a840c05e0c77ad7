"""Find the series names a PromQL expression reads (helper for the ops tests).

Not a PromQL parser: it removes what cannot be a series name (strings, label
matchers, grouping clauses, ranges, numbers) and keeps identifiers that are not
functions or keywords. That is enough for the expressions we write.
"""

from __future__ import annotations

import re

FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "avg",
        "avg_over_time",
        "bottomk",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count",
        "count_over_time",
        "count_values",
        "deriv",
        "exp",
        "floor",
        "group",
        "histogram_quantile",
        "holt_winters",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log2",
        "log10",
        "max",
        "max_over_time",
        "min",
        "min_over_time",
        "predict_linear",
        "quantile",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev",
        "stdvar",
        "sum",
        "sum_over_time",
        "time",
        "timestamp",
        "topk",
        "vector",
    ]
)
KEYWORDS = frozenset(
    [
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
    ]
)
BUILTIN_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
)
_RANGE = re.compile(r"\[[^\]]*\]")
_NAME = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)")
_LABEL_IN_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def series_names(expr: str) -> set[str]:
    """Return the series (metric) names `expr` reads."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = text.replace("$__rate_interval", " ")
    names = set()
    for match in _NAME.finditer(text):
        word = match.group(1)
        if word in FUNCTIONS or word in KEYWORDS or word in {"Inf", "NaN"}:
            continue
        names.add(word)
    return names


def grouping_labels(expr: str) -> set[str]:
    """Return the label names `expr` groups or matches on."""
    text = _STRING.sub('""', expr)
    labels: set[str] = set()
    for _keyword, inside in _GROUPING.findall(text):
        labels.update(part.strip() for part in inside.split(",") if part.strip())
    for matcher in _MATCHERS.findall(text):
        labels.update(_LABEL_IN_MATCHER.findall(matcher))
    return labels
