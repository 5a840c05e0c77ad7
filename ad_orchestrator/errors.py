"""Exceptions raised by ad-orchestrator.

Every error the project raises on purpose derives from `AdOrchestratorError`, so a
caller can catch the whole family in one place:

    AdOrchestratorError
    ├── ConfigError           settings, graph, campaign or rule files are wrong
    ├── RequestValidationError an incoming request or event does not fit its schema
    ├── GraphError            the agent graph cannot be compiled
    ├── BudgetError           a budget ledger operation was refused
    ├── WeightsError          a weights blob is missing, unsigned or does not fit
    └── LearningError         arrays or settings given to `rl/` do not fit together
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class AdOrchestratorError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AdOrchestratorError):
    """A settings value or a file under `config/` or `policies/` is invalid."""


class GraphError(ConfigError):
    """The declared agent graph has a cycle, an unknown agent or a missing input."""


class BudgetError(AdOrchestratorError):
    """A budget ledger operation was refused or its arguments are invalid."""


class WeightsError(AdOrchestratorError):
    """A weights blob is missing, fails its signature or does not fit its model."""


class LearningError(AdOrchestratorError, ValueError):
    """Arrays or settings given to the learning code (`rl/`) do not fit together.

    Raised for a wrong shape, an out-of-range hyper-parameter or a policy that
    puts probability on a forbidden action; the message names the argument.
    """


class RequestValidationError(AdOrchestratorError, ValueError):
    """An incoming request or event does not fit its schema.

    Attributes:
        problems: One `(field path, message)` pair per problem found, in the
            order the validator reported them.
    """

    def __init__(self, what: str, problems: Iterable[tuple[str, str]]) -> None:
        self.what = what
        self.problems = [(str(path), str(msg)) for path, msg in problems]
        # args are the constructor's arguments, so the error survives Celery's JSON
        # and msgpack result encoding (which rebuilds it as `cls(*args)`).
        super().__init__(what, [list(p) for p in self.problems])

    def __str__(self) -> str:
        lines = "; ".join(f"`{path}`: {msg}" for path, msg in self.problems)
        return f"invalid {self.what}: {lines}"

    def to_dict(self) -> dict[str, Any]:
        """Return the error as JSON-ready data, one entry per bad field."""
        return {
            "error": "validation",
            "what": self.what,
            "problems": [{"field": p, "message": m} for p, m in self.problems],
        }
