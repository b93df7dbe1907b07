"""Deployment files validate with the real tools: docker-compose, kubernetes-validate, systemd-analyze.

A check is skipped only where its tool is absent, and the skip says which tool.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedprompt.config import CoordinatorConfig, ParticipantConfig, load_toml
from tests.support import REPO

DEPLOY = REPO / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed (make setup installs it where apt/pip can)")
    return path


def test_compose_file_validates(tmp_path: Path) -> None:
    tool = _tool("docker-compose")
    result = subprocess.run([tool, "-f", str(DEPLOY / "compose" / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_failover_file_validates_with_two_replicas_on_one_store() -> None:
    """``docker-compose.ha.yml`` over the base file: two coordinators on the postgres profile's store, each with a
    lease and its own replica name, and participants given both addresses."""
    tool = _tool("docker-compose")
    yaml = pytest.importorskip("yaml", reason="PyYAML (kubernetes-validate's dependency) reads the resolved file")
    result = subprocess.run([tool, "-f", str(DEPLOY / "compose" / "docker-compose.yml"), "-f",
                             str(DEPLOY / "compose" / "docker-compose.ha.yml"), "--profile", "postgres", "config"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    replicas = {name: services[name]["command"] for name in ("coordinator", "coordinator-b")}
    stores = {command[command.index("--store") + 1] for command in replicas.values()}
    assert len(stores) == 1 and stores.pop().startswith("postgresql://") and "postgres" in services
    assert {command[command.index("--replica") + 1] for command in replicas.values()} == {"a", "b"}
    assert all(float(command[command.index("--lease-ttl-s") + 1]) > 0 for command in replicas.values())
    for site in ("participant-a", "participant-b", "participant-c"):
        assert services[site]["environment"]["FEDPROMPT_COORDINATOR"] == "coordinator:50051,coordinator-b:50051"


def test_kubernetes_failover_manifest_runs_two_replicas_ready_only_when_serving() -> None:
    """``coordinator-ha.yaml``: a Deployment of 2 replicas on a PostgreSQL store with a lease, behind a Service;
    ready = ``coordinator health`` (SERVING: the active replica), alive = the port listens (a standby too)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML (kubernetes-validate's dependency) reads the manifest")
    from fedprompt.config import parse_toml

    documents = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "coordinator-ha.yaml").read_text())}
    deployment, service = documents["Deployment"], documents["Service"]
    assert deployment["spec"]["replicas"] == 2
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["exec"]["command"][:3] == ["fedprompt", "coordinator", "health"]
    assert "tcpSocket" in container["livenessProbe"]
    assert container["args"][container["args"].index("--replica") + 1] == "$(POD_NAME)"
    config = parse_toml(documents["Secret"]["stringData"]["coordinator.toml"], CoordinatorConfig).coordinator
    assert config.store.startswith("postgresql://") and config.lease_ttl_s > 0


def test_kubernetes_manifests_validate() -> None:
    tool = _tool("kubernetes-validate")
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    assert manifests
    result = subprocess.run([tool, "--strict", *manifests], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_units_verify(tmp_path: Path) -> None:
    tool = _tool("systemd-analyze")
    installed = Path(sys.executable).parent / "fedprompt"
    units = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        # Only the install location differs from production (/opt/fedprompt); everything else is verified as is.
        text = unit.read_text().replace("/opt/fedprompt/.venv/bin/fedprompt", str(installed))
        (tmp_path / unit.name).write_text(text)
        units.append(str(tmp_path / unit.name))
    result = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shipped_configs_load() -> None:
    from fedprompt.config import JobConfig

    job = load_toml(DEPLOY / "compose" / "job.toml", JobConfig)
    assert job.he.enabled and job.job.allowed_participants
    load_toml(DEPLOY / "compose" / "coordinator.toml", CoordinatorConfig)
    # compose gives each site its own certificate on the command line, as these overrides do
    load_toml(DEPLOY / "compose" / "participant.toml", ParticipantConfig,
              {"participant.cert": "/etc/fedprompt/tls/participant-site-a.crt",
               "participant.key": "/etc/fedprompt/tls/participant-site-a.key"})
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text()
        assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text and "User=fedprompt" in text


def test_dockerfiles_pin_torch_and_run_unprivileged() -> None:
    for dockerfile in (DEPLOY / "docker").glob("Dockerfile.*"):
        text = dockerfile.read_text()
        assert "torch==2.13.0" in text and "USER fedprompt" in text and "HEALTHCHECK" in text
        assert "COPY pyproject.toml README.md constraints.txt ./" in text  # the tested versions, as `make setup`
        assert re.search(r"RUN pip install -c constraints\.txt ('\.\[[a-z,]+\]'|\.)\s", text)  # the extras it needs
