"""The bed itself: a job submitted to the API host renders on worker hosts that reach the
services only over the network, and the bed's faults do what they say."""

from __future__ import annotations

import socket

import pytest
import requests

from tests.multihost.conftest import QUICK, Farm
from tests.multihost.netbed import NetBed
from tests.scenes import uncached

pytestmark = pytest.mark.slow


def _connects(bed: NetBed, host: str, service: str) -> bool:
    """Can ``host`` open a TCP connection to ``service``? (asked from inside its namespace)"""
    return _reaches(bed, host, bed.addr(service), bed.port(service))


def _reaches(bed: NetBed, host: str, addr: str, port: int) -> bool:
    probe = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('{addr}', {port}), 1).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    import subprocess
    import sys

    ran = subprocess.run(
        ["ip", "netns", "exec", bed.ns(host), sys.executable, "-c", probe], capture_output=True
    )
    return ran.returncode == 0


def test_a_job_renders_on_the_worker_hosts(bed: NetBed, farm: Farm) -> None:
    key = farm.key()
    job_id = farm.post(key, uncached(QUICK), "Quick")
    job = farm.wait(key, job_id, timeout=90)
    assert job["status"] == "completed", job["error"]
    video = requests.get(job["result"]["video"], timeout=10)  # presigned, from the S3 host
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    # The workers got only FARM_* addresses of other hosts: nothing of theirs is on loopback.
    for host in bed.worker_hosts:
        env = bed.procs[host].env
        assert env["FARM_DATABASE_URL"].startswith(f"postgresql://postgres@{bed.addr('postgres')}")
        assert "127.0.0.1" not in " ".join(v for k, v in env.items() if k.startswith("FARM_"))


def test_faults_cut_what_they_name(bed: NetBed) -> None:
    host = bed.worker_hosts[0]
    assert all(_connects(bed, host, s) for s in ("postgres", "redis", "s3", "api"))
    bed.block(host, "redis")
    try:
        assert not _connects(bed, host, "redis")
        assert _connects(bed, host, "postgres") and _connects(bed, host, "s3")
        assert _connects(bed, bed.worker_hosts[1], "redis")
    finally:
        bed.unblock(host, "redis")
    bed.cut(host)
    try:
        assert not _connects(bed, host, "postgres")
        assert _connects(bed, bed.worker_hosts[1], "postgres")
    finally:
        bed.mend(host)
    assert _connects(bed, host, "postgres")
    # The runner reaches only the bed's addresses through its link
    with pytest.raises(OSError):
        socket.create_connection((bed.addr("postgres"), 1), 1)
    # The bed cannot reach the machine's own services (the machine is not on its switch)
    for addr, port in (("127.0.0.1", 5432), ("127.0.0.1", 6379), ("127.0.0.1", 8333)):
        assert not _reaches(bed, host, addr, port)
    assert not _reaches(bed, host, "10.77.0.1", 22)
