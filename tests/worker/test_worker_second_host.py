"""A worker on a second host: its own network namespace, the first host's Redis and PostgreSQL.

The test makes the second host itself: a Linux network namespace joined to
this one by a veth pair (``10.231.N.1`` here, ``10.231.N.2`` there). Redis and
PostgreSQL are its own servers, listening only on the first host's end of the
pair, so the namespaced worker can reach them only through it. The inbox, the
done folder and the model folder are one temporary folder that both hosts see
at the same path, as shared storage would be. A slide dropped in the inbox on
the first host (the watcher runs there) must be analysed by the worker in the
namespace and its counts stored in PostgreSQL. Needs root and ``ip netns``;
skips otherwise. Namespace, veth pair, servers and processes are removed in
teardown.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fault_servers import PG_BIN, PostgresServer, RedisServer, wait_until
from lab import Lab, drop
from smearflow.db import upgrade_database
from worker_testdata import write_slide

pytestmark = pytest.mark.integration


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


class SecondHost:
    """A network namespace and a veth pair with a private /30: ``host_address`` here, ``address`` inside."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.name = f"smearflow-{tag}"
        self.host_link, self.link = f"sfh{tag}", f"sfn{tag}"  # at most 15 characters
        used = _ip("-4", "-o", "addr", "show").stdout
        while True:  # a /30 no interface of this machine uses (another run of this test, say)
            third, fourth = random.randrange(256), 4 * random.randrange(64)
            if f"10.231.{third}.{fourth + 1}/" not in used and f"10.231.{third}.{fourth + 2}/" not in used:
                break
        self.subnet = f"10.231.{third}.{fourth}/30"
        self.host_address, self.address = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
        self.created = False

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs a command on the second host."""
        return ("ip", "netns", "exec", self.name)

    def create(self) -> "SecondHost":
        _ip("netns", "add", self.name)
        self.created = True
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.link)
        _ip("link", "set", self.link, "netns", self.name)
        _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        for args in (("addr", "add", f"{self.address}/30", "dev", self.link), ("link", "set", self.link, "up"),
                     ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.name, "ip", *args)
        return self

    def pids(self) -> list[int]:
        return [int(pid) for pid in _ip("netns", "pids", self.name, check=False).stdout.split()]

    def holds(self, pid: int) -> bool:
        """Whether process ``pid`` runs in this namespace."""
        return _ip("netns", "identify", str(pid), check=False).stdout.strip() == self.name

    def remove(self) -> None:
        """Kill what this test left running inside, then remove the namespace and both ends of the pair."""
        if self.created:
            for pid in self.pids():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", self.name, check=False)  # takes the inner end of the pair, and with it the outer
        _ip("link", "del", self.host_link, check=False)


class BoundRedis(RedisServer):
    """A throw-away ``redis-server`` listening only on ``address``, with a password.

    Without one, Redis' protected mode refuses every client that is not on its loopback interface.
    """

    def __init__(self, address: str):
        super().__init__()
        self.address, self.password = address, uuid.uuid4().hex
        self.url = f"redis://:{self.password}@{address}:{self.port}/0"

    def start(self) -> "BoundRedis":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", self.address, "--requirepass", self.password,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _reachable(self.address, self.port), 20, f"redis-server on {self.address}:{self.port}")
        return self


class BoundPostgres(PostgresServer):
    """A throw-away PostgreSQL cluster listening only on ``address``, trusting ``subnet``."""

    def __init__(self, address: str, subnet: str):
        super().__init__()
        self.address, self.subnet = address, subnet
        self.url = f"postgresql+psycopg://postgres@{address}:{self.port}/postgres"

    def init(self) -> "BoundPostgres":
        super().init()
        with open(self.data / "pg_hba.conf", "a") as hba:  # initdb trusts loopback only
            hba.write(f"host all all {self.subnet} trust\n")
        return self

    def start(self) -> "BoundPostgres":
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.address} -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        return self


@pytest.fixture
def second_host():
    if os.geteuid() != 0:
        pytest.skip("making a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    host = SecondHost()
    try:
        host.create()
    except subprocess.CalledProcessError as exc:
        host.remove()
        pytest.skip(f"`ip netns` is not available here: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
    try:
        yield host
    finally:
        host.remove()


@pytest.fixture
def first_host_servers(second_host):
    """Redis and PostgreSQL of the first host, reachable from the second only through the veth pair."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    if not PostgresServer.available():
        pytest.skip("PostgreSQL's initdb/pg_ctl or runuser is not available")
    redis_server = BoundRedis(second_host.host_address)
    postgres = BoundPostgres(second_host.host_address, second_host.subnet)
    try:
        redis_server.start()
        postgres.init().start()
        upgrade_database(postgres.url)
        yield redis_server, postgres
    finally:
        redis_server.stop()
        postgres.remove()


def _succeeded(service, task="smearflow.analyze_slide") -> int:
    return sum(1 for line in service.log().splitlines() if f"{task}[" in line and "succeeded in" in line)


def test_a_worker_on_a_second_host_analyses_a_slide_dropped_on_the_first(tmp_path, second_host, first_host_servers, tiny_model_dir):
    from smearflow.jobs import Analyzer, analyze_folder

    redis_server, postgres = first_host_servers
    # The second host has its own network: nothing listens on its loopback; the servers are across the pair.
    probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)"
    for address, reachable in ((second_host.host_address, 0), ("127.0.0.1", 1)):
        run = subprocess.run([*second_host.prefix, sys.executable, "-c", probe, address, str(redis_server.port)],
                             capture_output=True, timeout=30)
        assert run.returncode == reachable, (address, run.stderr)

    # tmp_path is the shared storage: inbox, done/, failed/ and the model folder at the same path on both hosts.
    lab = Lab(tmp_path / "lab", redis_server.url, postgres.url, tiny_model_dir)
    try:
        worker = lab.worker("second-host", prefix=second_host.prefix)
        lab.watcher()  # on the first host, like the export of the scanner
        # What an undisturbed analysis of the slide counts, computed here while the worker starts.
        reference = write_slide(lab.root / "reference" / "S-NS", seed=21, slide_json={"slide_id": "S-NS"})
        result = analyze_folder(reference, Analyzer.load(tiny_model_dir))
        want = {"status": result.status, "counts": result.counts, "rbc_count": result.rbc_count,
                "platelet_count": result.platelet_count}
        try:
            wait_until(lambda: "ready." in worker.log(), 120, "the second host's worker to start", interval_s=0.5)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{worker.log()[-6000:]}")
        assert second_host.holds(worker.process.pid)
        assert f"{second_host.host_address}:{redis_server.port}" in worker.log()  # its broker, across the pair

        drop(lab.inbox, "S-NS", seed=21, slide_json={"slide_id": "S-NS"})
        slide = lab.wait_for_status(["S-NS"], statuses=("done", "failed"), timeout_s=120)["S-NS"]
        assert slide["status"] == "done", slide
        assert slide["attempts"] == 1 and slide["n_fields"] == 2 and slide["n_counts"] > 0
        assert lab.counts("S-NS") == want
        assert Path(slide["folder"]) == lab.done / "S-NS" and (lab.done / "S-NS" / "field_00.png").is_file()
        wait_until(lambda: _succeeded(worker) == 1, 30, "the worker to report the slide", interval_s=0.5)
    finally:
        lab.close()
