"""docker-compose.yml, its CPU override and the Dockerfile, checked without a Docker engine.

The tests check what the deployment relies on (one image and one set of settings for every
smearflow service, data on the shared mount, health before dependants start, commands the CLI
accepts) rather than restating the file.
"""

import re
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


SMEARFLOW_SERVICES = ("migrate", "worker", "trainer", "beat", "watcher", "flower")
"""The services that run smearflow's image (the others are Redis and PostgreSQL)."""
FIXED_IN_CONTAINERS = {
    "SMEARFLOW_BROKER_URL", "SMEARFLOW_DATABASE_URL", "SMEARFLOW_TRAIN_DATA", "SMEARFLOW_MODELS_DIR",
    "SMEARFLOW_BENCHMARK_DIR",
}
SHARED_KEYS = ("image", "build", "user", "env_file", "environment", "volumes")
"""What every smearflow service must have alike: one image, one set of settings, one data mount."""


def _with_defaults(text: str) -> str:
    """``${NAME:-default}`` replaced by its default, as Compose does without ``.env``."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path or volume name of a service's bind mounts and volumes."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = _with_defaults(entry).split(":")[:2]
        mounts[target] = source
    return mounts


def _mounted(service: dict, path: str) -> bool:
    return any(path == target or path.startswith(target.rstrip("/") + "/") for target in _mounts(service))


def _documented_settings() -> set[str]:
    from smearflow.worker import settings

    return set(re.findall(r"^``(SMEARFLOW_[A-Z0-9_]+)``$", settings.__doc__, re.M))


def test_every_smearflow_service_runs_one_image_with_one_set_of_settings(compose):
    services = compose["services"]
    reference = services["worker"]
    for name in SMEARFLOW_SERVICES:
        for key in SHARED_KEYS:
            assert services[name][key] == reference[key], (name, key)
    # In particular the slide worker and beat, which must agree on queues, schedule and database.
    assert {key: services["beat"][key] for key in SHARED_KEYS} == {key: reference[key] for key in SHARED_KEYS}


def test_every_documented_setting_reaches_every_smearflow_service_from_the_env_file(compose):
    documented = _documented_settings()
    assert {"SMEARFLOW_TRAIN_CONFIG", "SMEARFLOW_BENCHMARK_CONFIG", "SMEARFLOW_RETRAIN_METRIC"} <= documented
    for name in SMEARFLOW_SERVICES:
        service = compose["services"][name]
        assert {"path": ".env", "required": False} in service["env_file"], name
        # .env reaches the container unless `environment` overrides the variable; only the fixed ones may.
        assert set(service["environment"]) <= FIXED_IN_CONTAINERS, name
        assert set(service["environment"]) <= documented, name
    listed = {line.split("=")[0].lstrip("# ") for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert documented - FIXED_IN_CONTAINERS <= listed


def test_the_fixed_addresses_are_the_services_of_the_deployment(compose):
    environment = compose["services"]["worker"]["environment"]
    for url in (environment["SMEARFLOW_BROKER_URL"], _with_defaults(environment["SMEARFLOW_DATABASE_URL"])):
        host = re.match(r"^[a-z+]+://(?:[^@/]*@)?([a-z0-9-]+):\d+/", url).group(1)
        assert host in compose["services"], url


def test_inbox_models_and_training_data_live_on_the_shared_data_mount(compose):
    services = compose["services"]
    watched = services["watcher"]["command"][2]
    environment = services["worker"]["environment"]
    paths = [watched, environment["SMEARFLOW_MODELS_DIR"], environment["SMEARFLOW_TRAIN_DATA"],
             environment["SMEARFLOW_BENCHMARK_DIR"]]
    for name in ("worker", "trainer", "watcher", "beat"):
        for path in paths:
            # The same host folder, so a slide the watcher sees is a slide the worker can read.
            assert _mounted(services[name], path), (name, path)
    assert len({tuple(sorted(_mounts(services[name]).items())) for name in SMEARFLOW_SERVICES}) == 1
    # Redis's queue and PostgreSQL's results survive a restart on named volumes.
    for name, data_dir in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data")):
        volume = _mounts(services[name])[data_dir]
        assert volume in compose["volumes"], name
    assert "--appendonly" in services["redis"]["command"]


def test_what_a_service_waits_for_is_healthy_or_completed(compose):
    services = compose["services"]
    for name, service in services.items():
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, (name, needed)
            if condition["condition"] == "service_healthy":
                assert "test" in services[needed]["healthcheck"], (name, needed)
            else:
                assert condition["condition"] == "service_completed_successfully", (name, needed)
                assert services[needed]["restart"] == "no", needed  # a one-off job, not restarted
    for name in ("worker", "trainer", "beat", "watcher"):
        # Nothing touches the database before the schema is migrated, or the queue before Redis answers.
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_every_command_is_one_the_command_line_accepts(compose):
    import click

    from smearflow.cli import build_command
    from smearflow.worker.settings import SLIDES, TRAINING

    services = compose["services"]
    for name in SMEARFLOW_SERVICES:
        command = [_with_defaults(arg) for arg in services[name]["command"]]
        if command[0] == "celery":
            assert command[1:3] == ["-A", "smearflow.worker"], name
            continue
        assert command[0] == "smearflow", name
        group, args = build_command(), command[1:]
        while isinstance(group, click.Group) and args and args[0] in group.commands:
            group, args = group.commands[args[0]], args[1:]
        assert not isinstance(group, click.Group), (name, command)
        group.make_context(group.name, list(args))  # unknown options, bad values: click.UsageError
    assert services["worker"]["command"][2:4] == ["--queues", SLIDES]
    assert services["trainer"]["command"][2:4] == ["--queues", TRAINING]


def test_workers_request_a_gpu(compose):
    for name in ("worker", "trainer"):
        (device,) = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


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
