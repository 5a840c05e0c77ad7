"""The declared agent graph and its compilation into Celery chords.

`config/agent_graph.yaml` names each agent's task and the agents whose outputs it
reads. `AgentGraph.levels` orders them into levels (every agent after all of its
inputs); each level becomes one chord whose header is a group of the level's agent
tasks and whose body is a single task: `adorch.advance` between levels, the reducer
after the last. A chord body is always one task, never a chain (chains as chord bodies
have known failures in Celery).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ad_orchestrator.errors import GraphError


class _AgentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    inputs: list[str] = []


class _GraphSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agents: dict[str, _AgentSpec]
    reducer: str


@dataclass(frozen=True)
class AgentGraph:
    """Agents, their tasks and inputs, ordered into levels that can run together."""

    tasks: dict[str, str]
    inputs: dict[str, tuple[str, ...]]
    reducer: str
    levels: tuple[tuple[str, ...], ...]

    @classmethod
    def from_dict(cls, data: Any, source: str = "agent graph") -> AgentGraph:
        """Validate a graph declaration and order it into levels."""
        try:
            spec = _GraphSpec.model_validate(data)
        except ValidationError as error:
            raise GraphError(f"{source}: {error}") from None
        names = set(spec.agents)
        for name, agent in spec.agents.items():
            unknown = sorted(set(agent.inputs) - names)
            if unknown:
                raise GraphError(
                    f"{source}: agent {name!r} reads {unknown}, which are not "
                    f"declared; declare them or remove them from its inputs"
                )
        levels: list[tuple[str, ...]] = []
        done: set[str] = set()
        while len(done) < len(names):
            ready = tuple(
                sorted(
                    name
                    for name, agent in spec.agents.items()
                    if name not in done and set(agent.inputs) <= done
                )
            )
            if not ready:
                raise GraphError(
                    f"{source}: agents {sorted(names - done)} depend on each other "
                    "in a cycle; break the cycle"
                )
            levels.append(ready)
            done.update(ready)
        return cls(
            tasks={name: agent.task for name, agent in spec.agents.items()},
            inputs={name: tuple(agent.inputs) for name, agent in spec.agents.items()},
            reducer=spec.reducer,
            levels=tuple(levels),
        )

    @classmethod
    def load(cls, path: Path) -> AgentGraph:
        """Read and validate the graph file."""
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise GraphError(f"cannot read agent graph {path}: {error}") from None
        return cls.from_dict(data, str(path))
