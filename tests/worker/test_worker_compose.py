"""docker-compose.yml, its CPU override and the Dockerfile, checked without a Docker engine."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML plus Compose's ``!reset`` / ``!override`` tags."""


def _tagged(tag):
    def construct(loader, node):
        if isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return {tag: value}

    return construct


_ComposeLoader.add_constructor("!reset", _tagged("!reset"))
_ComposeLoader.add_constructor("!override", _tagged("!override"))


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_of_the_deployment_is_there(compose):
    assert set(compose["services"]) == {"redis", "postgres", "migrate", "worker", "trainer", "beat", "watcher", "flower"}
    assert set(compose["volumes"]) == {"pg-data", "redis-data"}
    assert "pg-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    assert "--appendonly" in compose["services"]["redis"]["command"]


def test_commands_use_the_smearflow_cli(compose):
    services = compose["services"]
    assert services["migrate"]["command"] == ["smearflow", "db", "upgrade"]
    assert services["worker"]["command"][:4] == ["smearflow", "worker", "--queues", "slides"]
    assert services["trainer"]["command"][:4] == ["smearflow", "worker", "--queues", "training"]
    assert services["beat"]["command"][:2] == ["smearflow", "beat"]
    assert services["watcher"]["command"][:3] == ["smearflow", "watch", "/data/inbox"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "smearflow.worker", "flower"]


SMEARFLOW_SERVICES = ("migrate", "worker", "trainer", "beat", "watcher", "flower")
FIXED_IN_CONTAINERS = {
    "SMEARFLOW_BROKER_URL", "SMEARFLOW_DATABASE_URL", "SMEARFLOW_TRAIN_DATA", "SMEARFLOW_MODELS_DIR",
    "SMEARFLOW_BENCHMARK_DIR",
}


def _documented_settings() -> set[str]:
    import re

    from smearflow.worker import settings

    return set(re.findall(r"^``(SMEARFLOW_[A-Z0-9_]+)``$", settings.__doc__, re.M))


def test_every_documented_setting_reaches_every_service_that_reads_it(compose):
    documented = _documented_settings()
    assert {"SMEARFLOW_TRAIN_CONFIG", "SMEARFLOW_BENCHMARK_CONFIG", "SMEARFLOW_RETRAIN_METRIC"} <= documented
    for name in SMEARFLOW_SERVICES:
        service = compose["services"][name]
        assert {"path": ".env", "required": False} in service["env_file"], name
        overridden = set(service["environment"])
        # .env reaches the container unless `environment` overrides the variable; only the fixed ones may.
        assert overridden == FIXED_IN_CONTAINERS, name
        assert service["environment"]["SMEARFLOW_BROKER_URL"] == "redis://redis:6379/0"
        assert "${SMEARFLOW_DATA:-./data}:/data" in service["volumes"]
    listed = {line.split("=")[0].lstrip("# ") for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert documented - FIXED_IN_CONTAINERS <= listed


def test_smearflow_services_share_one_image(compose):
    for name in SMEARFLOW_SERVICES:
        service = compose["services"][name]
        assert service["image"].endswith("smearflow:latest}"), name
        assert service["build"]["context"] == "."


def test_workers_request_a_gpu_and_wait_for_the_migration(compose):
    for name in ("worker", "trainer"):
        service = compose["services"][name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert compose["services"]["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert compose["services"]["migrate"]["restart"] == "no"


def test_the_cpu_override_drops_the_gpu_reservations():
    override = yaml.load((ROOT / "docker-compose.cpu.yml").read_text(), Loader=_ComposeLoader)
    for name in ("worker", "trainer"):
        assert override["services"][name]["deploy"]["resources"]["reservations"]["devices"] == {"!reset": []}


def test_the_dockerfile_installs_the_package_and_ignores_local_state():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install \".[monitor]\"" in dockerfile and "ARG TENSORFLOW=tensorflow-cpu" in dockerfile
    assert "USER smearflow" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "data"} <= set(ignored)


def test_docker_compose_config_accepts_the_files(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"docker compose is not available: {probe.stderr.strip() or probe.stdout.strip()}")
    for files in (["-f", "docker-compose.yml"], ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]):
        result = subprocess.run([docker, "compose", *files, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
