"""The agent graph orders agents into levels and refuses broken declarations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ad_orchestrator.errors import GraphError
from ad_orchestrator.graph import AgentGraph
from ad_orchestrator.settings import CONFIG_DIR


def graph(agents: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "agents": {n: {"task": f"t.{n}", "inputs": i} for n, i in agents.items()},
        "reducer": "t.reduce",
    }


def test_the_shipped_graph_runs_context_and_content_first() -> None:
    """Budget and Policy run after the agents they read."""
    shipped = AgentGraph.load(CONFIG_DIR / "agent_graph.yaml")

    assert shipped.levels == (("content", "context"), ("budget", "policy"))
    assert shipped.reducer == "adorch.reduce"


def test_a_chain_of_inputs_becomes_one_level_per_step() -> None:
    """An agent never shares a level with one of its inputs."""
    compiled = AgentGraph.from_dict(graph({"a": [], "b": ["a"], "c": ["b"], "d": []}))

    assert compiled.levels == (("a", "d"), ("b",), ("c",))


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, "cycle"),
        ({"a": ["ghost"]}, "ghost"),
    ],
)
def test_a_broken_graph_is_refused(agents: dict[str, list[str]], message: str) -> None:
    """Cycles and unknown inputs are errors naming the agents."""
    with pytest.raises(GraphError, match=message):
        AgentGraph.from_dict(graph(agents))


def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    """A typo in the graph file stops start-up instead of being ignored."""
    path = tmp_path / "graph.yaml"
    path.write_text("agents: {a: {task: t.a, input: []}}\nreducer: t.r\n")

    with pytest.raises(GraphError, match="input"):
        AgentGraph.load(path)
