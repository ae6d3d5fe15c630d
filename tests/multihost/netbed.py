"""A farm on several hosts inside one machine: Linux network namespaces joined by a switch.

Hosts (one network namespace each, ``fm<slot>-<host>``), all on links this module creates, in
10.77.<slot>.0/24 and nowhere else:

    client (the farm's clients: the test runner's sockets)   10.77.S.1
    svc  PostgreSQL .2:5432, Redis .3:6379, S3 (SeaweedFS) .4:8533  (fresh instances)
    api  ``farm api`` on .5:8000 and ``farm scheduler``
    w1.. ``farm worker`` on .11, .12, ...

Each host has one veth ``eth0`` plugged into a bridge in the ``fm<slot>-sw`` namespace (the
switch). The machine's own network namespace is not on the switch: nothing in the bed can reach
the machine's services. The test runner talks to the bed from the ``client`` host by moving
its own thread there (``enter``/``leave``, setns(2)); sockets keep the namespace they were
made in. A worker gets only what a real node gets: ``FARM_*`` settings naming the services'
addresses, its own HOME and TMPDIR; it shares no directory with the API or the services.

Faults: ``cut(host)`` unplugs a host from the switch (its sockets see silence, as with a
pulled cable); ``block(host, service)`` drops one service for one host only (a blackhole route
to that service's address, so PostgreSQL, Redis and S3 each have their own); ``stop``/``start``
and ``signal`` act on processes. (``tc netem`` is not in every kernel; ``shape`` applies a
qdisc when it is.)

``python -m tests.multihost.netbed up`` runs a bed by hand until Ctrl-C; ``down`` removes
anything a crashed run left behind (only names with this slot's prefix).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FARM = str(Path(sys.prefix) / "bin" / "farm")
WEED = str(Path(sys.prefix) / "bin" / "weed")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# S3 and SeaweedFS's side ports differ from the machine's own instance (ops/dev/s3.sh): weed
# also names unix sockets in /tmp after its ports, and /tmp is shared across namespaces.
SERVICES = {"postgres": (2, 5432), "redis": (3, 6379), "s3": (4, 8533), "api": (5, 8000)}
ALL_WORKER_QUEUES = "render.low,stitch,webhooks"


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass
class Proc:
    name: str
    host: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    user: str | None = None
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class NetBed:
    slot: int = int(os.environ.get("FARM_TEST_SLOT", "0"))
    workers: int = 2
    worker_concurrency: int = 1
    api_workers: int = 2
    overrides: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path("/nonexistent"))
    procs: dict[str, Proc] = field(default_factory=dict)
    _home_ns: list[int] = field(default_factory=list)

    # --- names and addresses -------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"fm{self.slot}"

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def ip(self, last: int) -> str:
        return f"10.77.{self.slot}.{last}"

    def addr(self, service: str) -> str:
        return self.ip(SERVICES[service][0])

    def port(self, service: str) -> int:
        return SERVICES[service][1]

    @property
    def worker_hosts(self) -> list[str]:
        return [f"w{i + 1}" for i in range(self.workers)]

    @property
    def hosts(self) -> dict[str, list[int]]:
        """host -> last octets of its addresses."""
        return {
            "client": [1],
            "svc": [SERVICES[s][0] for s in ("postgres", "redis", "s3")],
            "api": [SERVICES["api"][0]],
            **{h: [11 + i] for i, h in enumerate(self.worker_hosts)},
        }

    @property
    def api_url(self) -> str:
        return f"http://{self.addr('api')}:{self.port('api')}"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@{self.addr('postgres')}:{self.port('postgres')}/farm"

    def farm_settings(self) -> dict[str, str]:
        """The ``FARM_*`` environment every farm host gets: addresses and short leases."""
        env = {
            "FARM_DATABASE_URL": self.database_url,
            "FARM_REDIS_URL": f"redis://{self.addr('redis')}:{self.port('redis')}/0",
            "FARM_S3_ENDPOINT": f"{self.addr('s3')}:{self.port('s3')}",
            "FARM_S3_BUCKET": "farm",
            "FARM_API_BIND": f"{self.addr('api')}:{self.port('api')}",
            "FARM_LOG_FORMAT": "text",
            "FARM_LEASE_SECONDS": "6",
            "FARM_HEARTBEAT_SECONDS": "1",
            "FARM_REQUEUE_AFTER_SECONDS": "15",
            "FARM_REAPER_INTERVAL_SECONDS": "1",
            "FARM_MAX_ATTEMPTS": "3",
            "FARM_CHUNK_TIMEOUT_SECONDS": "60",
            "FARM_PLAN_TIMEOUT_SECONDS": "60",
            "FARM_MIN_CHUNK_SECONDS": "0.5",
            "FARM_PARALLELISM": "2",
            # The bed's tests repeat a few scenes to watch queues, leases and faults: each job
            # must render its chunks, not find them in the animation cache (tests/test_anim_cache).
            "FARM_ANIM_CACHE": "false",
            "FARM_RATE_LIMIT_PER_SECOND": "1000",
            "FARM_RATE_LIMIT_BURST": "1000",
            "FARM_MAX_ACTIVE_JOBS_PER_USER": "500",
            "FARM_DISPATCH_QUEUE_DEPTH": "1",
            "FARM_DISPATCH_INTERVAL_SECONDS": "0.5",
        }
        env.update(self.overrides)
        return env

    def host_env(self, host: str) -> dict[str, str]:
        """What a node's process manager would give it: no inherited environment."""
        home = self.workdir / host
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return {
            "PATH": f"{Path(sys.prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "PYTHONPATH": str(ROOT),  # the node's installed farm: this checkout
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
            **self.farm_settings(),
        }

    # --- network ---------------------------------------------------------------------------

    def up_network(self) -> None:
        sw = self.ns("sw")
        sh("ip", "netns", "add", sw)
        sh("ip", "-n", sw, "link", "set", "lo", "up")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for host, octets in self.hosts.items():
            ns = self.ns(host)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", sw, "link", "add", host, "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            sh("ip", "-n", sw, "link", "set", host, "master", "br0", "up")
            for last in octets:
                sh("ip", "-n", ns, "addr", "add", f"{self.ip(last)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def enter(self) -> None:
        """Move the calling thread into the client host (sockets it opens live there)."""
        self._home_ns.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY))
        _setns(f"/var/run/netns/{self.ns('client')}")

    def leave(self) -> None:
        """Back to the namespace ``enter`` left."""
        fd = self._home_ns.pop()
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def as_client(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def cut(self, host: str) -> None:
        """Unplug the host from the switch: no packet in or out, no error either."""
        sh("ip", "-n", self.ns("sw"), "link", "set", host, "down")

    def mend(self, host: str) -> None:
        sh("ip", "-n", self.ns("sw"), "link", "set", host, "up")

    def block(self, host: str, service: str) -> None:
        """Drop every packet from ``host`` to one service (and so its replies too)."""
        sh("ip", "-n", self.ns(host), "route", "add", "blackhole", f"{self.addr(service)}/32")

    def unblock(self, host: str, service: str) -> None:
        sh("ip", "-n", self.ns(host), "route", "del", "blackhole", f"{self.addr(service)}/32")

    def shape(self, host: str, *qdisc: str) -> bool:
        """Apply a qdisc (e.g. ``netem delay 20ms loss 1%``) on the host's link; False when
        this kernel lacks it."""
        ran = sh("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "replace", "dev", "eth0",
                 "root", *qdisc, check=False)  # fmt: skip
        return ran.returncode == 0

    # --- processes -------------------------------------------------------------------------

    def spawn(self, name: str, host: str, argv: list[str], user: str | None = None,
              env: dict[str, str] | None = None) -> Proc:  # fmt: skip
        log = self.workdir / "logs" / f"{name}.log"
        proc = Proc(name, host, argv, env if env is not None else self.host_env(host), log, user)
        self.procs[name] = proc
        return self.start(name)

    def start(self, name: str) -> Proc:
        proc = self.procs[name]
        assert not proc.alive(), f"{name} is already running"
        prefix = ["ip", "netns", "exec", self.ns(proc.host)]
        if proc.user:
            prefix += ["setpriv", f"--reuid={proc.user}", f"--regid={proc.user}", "--init-groups"]
        with open(proc.log, "ab") as handle:
            proc.popen = subprocess.Popen(
                [*prefix, *proc.argv],
                env=proc.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
                start_new_session=True,
            )
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        proc = self.procs[name]
        if not proc.alive() or proc.popen is None:
            return
        _kill_group(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        _kill_group(proc.pid, sig)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
        _kill_group(proc.pid, signal.SIGKILL)  # stragglers left in its group

    def signal(self, name: str, sig: int) -> None:
        _kill_group(self.procs[name].pid, sig)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.procs[name].log
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- services --------------------------------------------------------------------------

    def start_postgres(self) -> None:
        pg = self.workdir / "svc" / "pg"
        data = pg / "data"
        pg.mkdir(parents=True)
        shutil.chown(pg, "postgres", "postgres")
        subprocess.run(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
             str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, cwd="/",
        )  # fmt: skip
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all 10.77.{self.slot}.0/24 trust\n")
        self.spawn(
            "postgres",
            "svc",
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port("postgres")),
             "-c", f"listen_addresses={self.addr('postgres')}",
             "-c", f"unix_socket_directories={pg}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300", "-c", "shared_buffers=64MB"],
            user="postgres",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )  # fmt: skip

    def start_redis(self) -> None:
        data = self.workdir / "svc" / "redis"
        data.mkdir(parents=True)
        self.spawn(
            "redis",
            "svc",
            ["redis-server", "--bind", self.addr("redis"), "--port", str(self.port("redis")),
             "--save", "", "--appendonly", "no", "--dir", str(data), "--protected-mode", "no"],
            env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip

    def start_s3(self) -> None:
        data = self.workdir / "svc" / "s3"
        (data / "tmp" / "data").mkdir(parents=True)
        # Inside its mount namespace data/tmp is /tmp: its data and config are named from there.
        shutil.copy(ROOT / "ops/dev/s3.json", data / "tmp" / "s3.json")
        addr = self.addr("s3")
        weed = [WEED, "mini", "-dir=/tmp/data", f"-ip={addr}", f"-ip.bind={addr}",
                f"-s3.port={self.port('s3')}", "-s3.config=/tmp/s3.json",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.port=9633",
                "-volume.port=9640", "-filer.port=9188", "-admin.port=23946", "-admin.ui=false",
                "-webdav=false", "-master.telemetry=false"]  # fmt: skip
        # Its own /tmp (a private mount namespace): weed puts unix sockets there, named only by
        # port, which the machine's own SeaweedFS would otherwise share. The binary is opened
        # before the mount and run through its descriptor: a checkout under /tmp (a CI clone)
        # is hidden once /tmp is replaced.
        private_tmp = 'exec 3<"$1" && mount --bind "$0" /tmp && shift && exec /proc/self/fd/3 "$@"'
        self.spawn(
            "s3",
            "svc",
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", private_tmp,
             str(data / "tmp"), *weed],
            env={"PATH": "/usr/bin:/bin", "HOME": str(data), "TMPDIR": str(data / "tmp")},
        )  # fmt: skip

    def reachable(self, service: str, timeout: float = 0.5) -> bool:
        import socket

        try:
            with socket.create_connection((self.addr(service), self.port(service)), timeout):
                return True
        except OSError:
            return False

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{self.tail(n, 15)}" for n in self.procs)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{logs}")

    def wait_service(self, service: str, timeout: float = 60) -> None:
        self.wait_until(lambda: self.reachable(service), timeout, f"{service} to listen")

    def s3_ready(self) -> bool:
        from farm.config import load_settings
        from farm.storage import S3Storage

        try:
            S3Storage(load_settings(self.farm_settings())).ensure_bucket()
            return True
        except Exception:
            return False

    def start_farm(self) -> None:
        self.spawn("api", "api", [FARM, "api", "--workers", str(self.api_workers)])
        self.spawn("scheduler", "api", [FARM, "scheduler"])
        for host in self.worker_hosts:
            self.spawn(host, host, [FARM, "worker", "--queues", ALL_WORKER_QUEUES,
                                    "--concurrency", str(self.worker_concurrency)])  # fmt: skip

    def api_ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.api_url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except Exception:
            return False

    def workers_ready(self) -> bool:
        import redis

        client = redis.Redis(host=self.addr("redis"), port=self.port("redis"), socket_timeout=2)
        return len(list(client.scan_iter("farm:consumers:*"))) >= self.workers

    # --- the whole bed ---------------------------------------------------------------------

    def up(self) -> NetBed:
        if os.geteuid() != 0:
            raise PermissionError("the multi-host bed needs root (ip netns)")
        clean(self.slot)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-bed-"))
        self.workdir.chmod(0o755)
        (self.workdir / "logs").mkdir()
        try:
            self.up_network()
            with self.as_client():
                self._start_all()
        except BaseException:
            self.down()
            raise
        return self

    def _start_all(self) -> None:
        self.start_postgres()
        self.start_redis()
        self.start_s3()
        for service in ("postgres", "redis", "s3"):
            self.wait_service(service)
        migrate = subprocess.run(
            [FARM, "migrate", "--create-database"],
            env=self.host_env("client"),
            capture_output=True,
            text=True,
            cwd=str(ROOT),
        )
        if migrate.returncode:
            raise RuntimeError(f"farm migrate failed: {migrate.stdout}{migrate.stderr}")
        self.wait_until(self.s3_ready, 60, "the S3 bucket")
        self.start_farm()
        self.wait_until(self.api_ready, 60, "the API's /readyz")
        self.wait_until(self.workers_ready, 90, "the workers' heartbeats")

    def down(self) -> None:
        """Stop every process, delete every namespace and link, remove the temp dirs."""
        for name in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(name, timeout=10)
        clean(self.slot)
        keep = os.environ.get("FARM_NETBED_KEEP_LOGS")
        if keep and self.workdir.exists():
            shutil.copytree(self.workdir / "logs", keep, dirs_exist_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    @contextlib.contextmanager
    def running(self, client: bool = True) -> Iterator[NetBed]:
        """The bed, up; with ``client``, the calling thread in its client host meanwhile."""
        self.up()
        try:
            with self.as_client() if client else contextlib.nullcontext():
                yield self
        finally:
            self.down()


def clean(slot: int) -> None:
    """Remove what a bed of this slot left: processes inside its namespaces, the namespaces,
    the runner's link. Touches only names with the ``fm<slot>-`` prefix."""
    prefix = f"fm{slot}-"
    listed = sh("ip", "netns", "list", check=False).stdout.split()
    namespaces = [n for n in listed if n.startswith(prefix)]
    for ns in namespaces:
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for ns in namespaces:
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", f"{prefix}root", check=False)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "up"
    slot = int(os.environ.get("FARM_TEST_SLOT", "0"))
    if command == "down":
        clean(slot)
        return 0
    if command != "up":
        print("usage: python -m tests.multihost.netbed up|down", file=sys.stderr)
        return 2
    bed = NetBed(slot=slot)
    with bed.running():
        print(json.dumps({"api": bed.api_url, "database": bed.database_url,
                          "logs": str(bed.workdir / "logs")}, indent=2), flush=True)  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


def _sigwait_ready() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    _sigwait_ready()
    sys.exit(main(sys.argv[1:]))
