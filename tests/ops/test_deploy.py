"""Containers: Dockerfile, docker-compose and the Helm chart render, parse and
start the same entry points as the Makefile.

Docker cannot run here and Helm is not in the package registries this project
uses, so the chart is rendered with a small template subset (`_helm.py`) and the
manifests' structure is checked; `helm lint`/`helm template` run when a `helm`
binary exists.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _helm import TemplateError, render, render_chart

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
CHART = DOCKER / "helm" / "ad-orchestrator"
SECRETS = {
    "secrets": {
        "redisUrl": "redis://:pw@redis:6379/0",
        "weightsHmacKey": "k" * 32,
        "idSalt": "s" * 32,
    },
    "flower": {"password": "flower-pw"},
}
PROCESS_TARGETS = ("worker", "beat", "flower", "web")


def _makefile_entry_points() -> dict[str, list[str]]:
    """Return the command each process target of the Makefile runs, as words."""
    text = (REPO_ROOT / "Makefile").read_text()
    found = {}
    for target in PROCESS_TARGETS:
        match = re.search(rf"^{target}:.*\n\t(.+)$", text, re.MULTILINE)
        assert match, f"Makefile has no `{target}` target"
        line = match.group(1).replace("$(VENV)/bin/", "").replace("$(PY) -m ", "")
        words = [w for w in shlex.split(line) if not w.startswith("$(")]
        found[target] = words
    return found


def _starts_with_entry_point(command: list[str], entry: list[str]) -> bool:
    # The Makefile's own options (host, port) may differ per deployment.
    head = [w for w in entry if not w.startswith("-")][:2]
    return command[: len(head)] == head


def _docs(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [
        doc
        for name, text in rendered.items()
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# Helm chart --------------------------------------------------------------------


def test_chart_renders_to_valid_manifests() -> None:
    """Every rendered object has an apiVersion, kind and name; kinds are as expected."""
    docs = _docs(render_chart(CHART, SECRETS))

    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 4
    assert {"ConfigMap", "Secret", "Service", "HorizontalPodAutoscaler"} <= set(kinds)


def test_deployments_select_their_own_pods_and_run_non_root() -> None:
    """Selectors match pod labels; pods refuse root; containers name an image."""
    for name, deployment in _by_kind(
        _docs(render_chart(CHART, SECRETS)), "Deployment"
    ).items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            assert container["image"] == "ad-orchestrator:0.1.0"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_worker_is_probed_with_celery_ping_and_autoscaled() -> None:
    """The worker's liveness and readiness ping its own node; the HPA scales it."""
    docs = _docs(render_chart(CHART, SECRETS))
    worker = _by_kind(docs, "Deployment")["adorch-worker"]
    hpa = _by_kind(docs, "HorizontalPodAutoscaler")["adorch-worker"]
    container = worker["spec"]["template"]["spec"]["containers"][0]

    for probe in ("livenessProbe", "readinessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert (
            "celery -A ad_orchestrator.app inspect ping -d celery@$HOSTNAME" in command
        )
    assert hpa["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_worker_metrics_sidecar_shares_the_multiprocess_folder() -> None:
    """The exporter reads the same PROMETHEUS_MULTIPROC_DIR volume as the worker."""
    worker = _by_kind(_docs(render_chart(CHART, SECRETS)), "Deployment")[
        "adorch-worker"
    ]
    containers = {
        c["name"]: c for c in worker["spec"]["template"]["spec"]["containers"]
    }

    def folder(container: dict[str, Any]) -> str:
        env = {e["name"]: e["value"] for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        return mounts[env["PROMETHEUS_MULTIPROC_DIR"]]

    assert folder(containers["worker"]) == folder(containers["metrics"])
    assert containers["metrics"]["command"][:3] == [
        "python",
        "-m",
        "ad_orchestrator.metrics",
    ]


def test_every_reference_points_at_a_rendered_object() -> None:
    """ConfigMap/Secret references and Service selectors resolve inside the chart."""
    docs = _docs(render_chart(CHART, SECRETS))
    configmaps = _by_kind(docs, "ConfigMap")
    secrets = _by_kind(docs, "Secret")
    deployments = _by_kind(docs, "Deployment")

    for deployment in deployments.values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                else:
                    assert source["secretRef"]["name"] in secrets
    for service in _by_kind(docs, "Service").values():
        selected = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        ports = {
            p["name"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_flower_reads_its_credentials_from_a_secret() -> None:
    """Flower's password lives in its own Secret, never in the Deployment."""
    rendered = render_chart(CHART, SECRETS)
    docs = _docs(rendered)
    flower_secret = _by_kind(docs, "Secret")["adorch-flower"]
    flower = _by_kind(docs, "Deployment")["adorch-flower"]
    container = flower["spec"]["template"]["spec"]["containers"][0]

    assert flower_secret["stringData"]["ADORCH_FLOWER_PASSWORD"] == "flower-pw"
    assert {"secretRef": {"name": "adorch-flower"}} in container["envFrom"]
    assert "flower-pw" not in rendered["flower.yaml"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"secrets": {"redisUrl": ""}}, "set secrets.redisUrl"),
        ({"secrets": {"weightsHmacKey": ""}}, "set secrets.weightsHmacKey"),
        ({"secrets": {"idSalt": ""}}, "set secrets.idSalt"),
        ({"flower": {"password": ""}}, "Flower never runs without credentials"),
    ],
)
def test_missing_secrets_stop_the_render(
    overrides: dict[str, Any], message: str
) -> None:
    """Installing without a required secret fails and names the value to set."""
    values = {key: dict(value) for key, value in SECRETS.items()}
    for key, value in overrides.items():
        values[key].update(value)

    with pytest.raises(TemplateError, match=message):
        render_chart(CHART, values)


def test_optional_parts_can_be_switched_off() -> None:
    """Without Flower, web, beat and autoscaling only the worker and config remain."""
    off = {"enabled": False}
    values = {
        **SECRETS,
        "flower": {"enabled": False, "password": ""},
        "web": off,
        "beat": off,
        "worker": {"autoscaling": off},
    }

    kinds = sorted(d["kind"] for d in _docs(render_chart(CHART, values)))

    assert kinds == ["ConfigMap", "Deployment", "Secret"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('{{ include "x" . }}', "outside the subset"),
        ("{{ range .Values.a }}{{ end }}", "outside the subset"),
        ("{{ if .Values.a }}open", "no matching `end`"),
        ("{{ .Values.a | upper }}", "unsupported function"),
    ],
)
def test_renderer_refuses_syntax_it_does_not_implement(
    template: str, message: str
) -> None:
    """The test renderer fails loudly rather than mis-render unknown syntax."""
    with pytest.raises(TemplateError, match=message):
        render(template, {"Values": {"a": ["x"]}})


def test_chart_processes_start_the_makefile_entry_points() -> None:
    """Worker, beat, Flower and web containers run what `make <target>` runs."""
    entry = _makefile_entry_points()
    deployments = _by_kind(_docs(render_chart(CHART, SECRETS)), "Deployment")

    for target in PROCESS_TARGETS:
        command = deployments[f"adorch-{target}"]["spec"]["template"]["spec"][
            "containers"
        ][0]["command"]
        assert _starts_with_entry_point(command, entry[target]), (target, command)


HELM = shutil.which("helm")


@pytest.mark.skipif(HELM is None, reason="helm is not installed (not in apt or PyPI)")
def test_helm_lint_and_template_pass(tmp_path: Path) -> None:
    """With a real helm binary, the chart lints and templates cleanly."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(SECRETS))
    for command in (["lint"], ["template", "adorch"]):
        done = subprocess.run(
            [str(HELM), *command, str(CHART), "-f", str(values)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


# docker-compose ------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_has_the_whole_stack() -> None:
    """Redis, workers, beat, Flower, web, Prometheus and Grafana are all services."""
    services = set(_compose()["services"])

    assert {"redis", "beat", "flower", "web", "prometheus", "grafana"} <= services
    assert any(
        name.startswith("worker-") and name != "worker-metrics" for name in services
    )


def test_compose_processes_start_the_makefile_entry_points() -> None:
    """Each process service runs the same entry point as its Makefile target."""
    entry = _makefile_entry_points()
    services = _compose()["services"]
    workers = [
        s
        for n, s in services.items()
        if n.startswith("worker-") and n != "worker-metrics"
    ]

    for worker in workers:
        assert _starts_with_entry_point(worker["command"], entry["worker"])
        assert "-E" in entry["worker"] or worker["command"] == ["adorch", "worker"]
    for target in ("beat", "flower", "web"):
        assert _starts_with_entry_point(services[target]["command"], entry[target])


def test_compose_worker_metrics_share_a_volume_and_are_scraped() -> None:
    """The exporter mounts the worker's multiprocess folder; Prometheus scrapes it."""
    services = _compose()["services"]
    worker, exporter = services["worker-adorch"], services["worker-metrics"]
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for config in job["static_configs"]
        for t in config["targets"]
    }

    assert set(worker["volumes"]) == set(exporter["volumes"])
    folder = worker["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert worker["volumes"][0].split(":")[1] == folder
    assert {"worker-metrics:9808", "web:8000"} <= targets
    assert "9808" in exporter["command"]


def test_compose_mounts_exist_and_secrets_are_never_defaults() -> None:
    """Bind mounts point at files in docker/; every password must be supplied."""
    compose = _compose()
    text = (DOCKER / "docker-compose.yml").read_text()

    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), source
    for variable in ("REDIS_PASSWORD", "FLOWER_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"\$\{{{variable}:\?", text), variable


# Dockerfile ------------------------------------------------------------------------


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_image_is_slim_non_root_with_cpu_torch() -> None:
    """The final stage is a slim Python, runs as a numeric non-root user, CPU torch."""
    text = _dockerfile()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)

    assert stages[-1].endswith("-slim")
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r'TORCH_SPEC="torch==[\d.]+\+cpu"', text)


def test_image_default_command_is_a_makefile_entry_point() -> None:
    """The image's CMD is `make worker`'s command."""
    match = re.search(r"^CMD (\[.*\])$", _dockerfile(), re.MULTILINE)

    assert match
    assert _starts_with_entry_point(
        yaml.safe_load(match.group(1)), _makefile_entry_points()["worker"]
    )


def test_image_copies_only_what_exists_and_is_not_ignored() -> None:
    """Every COPY source is in the repository and let through by the ignore file."""
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split("\n")
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}

    for line in re.findall(r"^COPY (?!--from)(.+)$", _dockerfile(), re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, source
