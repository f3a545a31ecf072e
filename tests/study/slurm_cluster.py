"""A real single-node Slurm for tests: munged, slurmctld and slurmd (Debian's slurm-wlm)
started as child processes, every file under one temporary folder.

``slurm_cluster(folder)`` yields the ``SLURM_CONF`` path once ``sinfo`` says the node is
idle, and kills the daemons after. :func:`unavailable` says why Slurm cannot start here
(binaries missing, not root), or returns None.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["slurm_cluster", "unavailable"]

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def unavailable() -> str | None:
    """Why a Slurm cluster cannot start on this machine, or None when it can."""
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return (
            f"Slurm/munge binaries missing ({', '.join(missing)}): apt-get install slurm-wlm munge"
        )
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _config(root: Path, munge_socket: Path, ports: list[int]) -> str:
    state, spool, logs = root / "state", root / "spool", root / "log"
    for folder in (state, spool, logs):
        folder.mkdir(parents=True, exist_ok=True)
    return "\n".join(
        [
            "ClusterName=radtest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket},cred_expire=5",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={state}",
            f"SlurmdSpoolDir={spool}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={logs / 'slurmctld.log'}",
            f"SlurmdLogFile={logs / 'slurmd.log'}",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={logs / 'jobcomp.txt'}",
            "ReturnToService=2",
            "KillWait=10",
            "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Sockets=1 CoresPerSocket=2 "
            "ThreadsPerCore=1 RealMemory=20000",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _ours(conf: Path) -> list[int]:
    """The slurmstepd processes of this cluster (they leave slurmd's process tree): those
    whose environment has our ``SLURM_CONF``."""
    pids = []
    marker = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _drain(conf: Path, env: dict[str, str], timeout: float = 20.0) -> None:
    """Cancel every job and wait (bounded) until Slurm has no job running."""
    subprocess.run([str(_which("scancel")), "--full", "--user=root"], env=env, check=False)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        res = subprocess.run(
            [str(_which("squeue")), "-h", "-t", "RUNNING,COMPLETING", "-o", "%i"],
            capture_output=True,
            text=True,
            env=env,
        )
        if (res.returncode != 0 or not res.stdout.strip()) and not _ours(conf):
            return
        time.sleep(0.3)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait()


@contextlib.contextmanager
def slurm_cluster(root: Path, timeout: float = 60.0) -> Iterator[Path]:
    """Start munged, slurmctld and slurmd under ``root``; yield ``slurm.conf``'s path.

    Args:
        root: an empty folder for every config, key, socket, state, spool and log file.
        timeout: seconds to wait for the node to be idle.

    Raises:
        RuntimeError: a daemon exited or the node did not become idle (with the logs).
    """
    root = Path(root)
    key_dir, sock_dir = root / "munge-key", root / "munge-sock"
    key_dir.mkdir(mode=0o700, parents=True)
    sock_dir.mkdir(parents=True)
    sock_dir.chmod(0o755)
    key = key_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = sock_dir / "munge.socket.2"
    conf = root / "slurm.conf"
    conf.write_text(_config(root, munge_socket, _free_ports(2)))
    env = dict(os.environ, SLURM_CONF=str(conf))
    logs = root / "log"
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], name: str) -> None:
        out = open(logs / f"{name}.stdout", "wb")  # noqa: SIM115 (the child keeps it)
        procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env))
        out.close()

    def logs_text() -> str:
        parts = []
        for path in sorted(logs.glob("*")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    try:
        start(
            [
                str(_which("munged")),
                "-F",
                f"--key-file={key}",
                f"--socket={munge_socket}",
                f"--pid-file={root / 'munged.pid'}",
                f"--log-file={logs / 'munged.log'}",
                f"--seed-file={root / 'munged.seed'}",
                "--force",
            ],
            "munged",
        )
        end = time.monotonic() + 10
        while not munge_socket.exists():
            if procs[0].poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"munged did not start\n{logs_text()}")
            time.sleep(0.05)
        start([str(_which("slurmctld")), "-D", "-f", str(conf)], "slurmctld")
        start([str(_which("slurmd")), "-D", "-f", str(conf), "-N", "localhost"], "slurmd")
        end = time.monotonic() + timeout
        state = ""
        while True:
            dead = [p.args[0] for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(map(str, dead))} exited\n{logs_text()}")
            res = subprocess.run(
                [str(_which("sinfo")), "-h", "-o", "%t"], capture_output=True, text=True, env=env
            )
            state = res.stdout.strip()
            if state == "idle":
                break
            if time.monotonic() > end:
                raise RuntimeError(f"the node is {state!r}, not idle\n{logs_text()}")
            time.sleep(0.3)
        yield conf
    finally:
        if all(p.poll() is None for p in procs[1:]):
            _drain(conf, env)
        _stop(procs)
        for pid in _ours(conf):  # a step the stopped slurmd left behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
