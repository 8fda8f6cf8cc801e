"""The one-node cluster of scripts/slurm.sh listens on loopback only (docs/slurm.md): its daemons,
srun's own ports and munge, read from /proc/net/tcp{,6} and the processes' open sockets."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import time
from pathlib import Path

from conftest import ROOT, require
from test_slurm import slurm  # noqa: F401  (the fixture: the cluster is up, with accounting)

# What the cluster runs: the SLURM daemons, srun (a job step's I/O ports), munge, MariaDB.
PROGRAMS = {"slurmctld", "slurmd", "slurmdbd", "slurmstepd", "srun", "munged", "mariadbd"}


def tcp_listeners() -> dict[int, str]:
    """Socket inode -> "address:port" of every listening TCP socket on this host."""
    found = {}
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = f"{ipaddress.ip_address(raw)}:{int(port, 16)}"
    return found


def listening_programs() -> list[tuple[str, str]]:
    """(program, "address:port") for each listening socket held by one of PROGRAMS."""
    sockets = tcp_listeners()
    held = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                not proc.name.isdigit()
                or (comm := (proc / "comm").read_text().strip()) not in PROGRAMS
            ):
                continue
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:  # the process ended meanwhile
            continue
        for link in links:
            if (m := re.fullmatch(r"socket:\[(\d+)\]", link)) and int(m[1]) in sockets:
                held.append((comm, sockets[int(m[1])]))
    return sorted(set(held))


def test_the_cluster_listens_on_loopback_only(slurm):  # noqa: F811
    """slurmctld, slurmd, slurmdbd and a running srun listen on 127.0.0.0/8 only (SLURM 22.05 binds
    to what the host name resolves to: scripts/slurm.sh), and `slurm.sh status` says so, exit 0."""
    require(
        "root (to see the daemons' sockets)", os.geteuid() == 0, "run the tests as root, as .ci/run"
    )
    step = subprocess.Popen(
        ["srun", "-n1", "sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while "srun" not in dict(held := listening_programs()):
            assert step.poll() is None, step.stderr.read().decode()
            assert time.monotonic() < deadline, f"srun opened no port: {held}"
            time.sleep(0.2)
    finally:
        step.terminate()
        step.wait(timeout=60)
    assert {"slurmctld", "slurmd", "slurmdbd", "srun"} <= {p for p, _ in held}, held
    resolved = socket.gethostbyname(socket.gethostname())
    beyond = [
        (p, a)
        for p, a in held
        if not ipaddress.ip_address(a.rsplit(":", 1)[0].strip("[]")).is_loopback
    ]
    assert not beyond, (
        f"listening beyond loopback: {beyond} ({socket.gethostname()} resolves to {resolved})"
    )

    done = subprocess.run(
        ["bash", "scripts/slurm.sh", "status"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("slurm: listening on: "))
    ports = sorted(a.rsplit(":", 1)[1] for a in line.split(": ", 2)[2].split())
    assert ports == ["6817", "6818", "6819"] and "beyond loopback" not in done.stdout, line
