"""Multi-node pretraining as docs/distributed.md tells a cluster to run it: two "nodes" in two
network namespaces joined by a veth pair, one torchrun each with a c10d rendezvous, equal to
one process on the global batch; and a rank that never comes fails within dist.timeout_min
with a message naming that key, instead of hanging silently.

Run as a script (``torchrun ... tests/engine/test_multinode.py pretrain ...``, the repo root
on PYTHONPATH) this module is ``radengine pretrain`` with test_trainer's BN-free model
registered: batch statistics per rank would make the two runs differ by design.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from radengine.cli import main
from radengine.config import ConfigError, load_pretrain_config
from radengine.data.builtin import write_synthetic_ct_store
from radengine.engine import distributed
from radengine.engine.trainer import pretrain
from tests.engine.test_trainer import DDP_EXTRA, TINY, _NoBN, _register_nobn

REPO = Path(__file__).resolve().parents[2]

# The two "nodes": addresses exist only inside the namespaces this test creates.
HEAD_ADDR, OTHER_ADDR = "10.213.0.1", "10.213.0.2"
RDZV_PORT = 29400  # free: the namespaces are new and empty
NODE_TIMEOUT_S = 120  # both torchruns; the whole test takes about 10 s


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "ct"
    write_synthetic_ct_store(path, patients=8, slices=6, size=32)  # test_trainer's store
    return path


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _two_namespaces(tag: str) -> tuple[str, str]:
    """Two network namespaces joined by a veth pair; skips the test where that is not
    allowed. The pair is created inside the namespaces, so the host's network is never
    touched; deleting the namespaces removes it."""
    if shutil.which("ip") is None:
        pytest.skip("network namespaces need the ip command (Debian package iproute2)")
    head, other = f"rad{tag}h", f"rad{tag}o"
    made = _ip("netns", "add", head)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        _ip("netns", "add", other).check_returncode()
        vh, vo = f"rv{tag}h", f"rv{tag}o"
        steps = [
            ("-n", head, "link", "add", vh, "type", "veth", "peer", "name", vo, "netns", other),
            ("-n", head, "addr", "add", f"{HEAD_ADDR}/24", "dev", vh),
            ("-n", other, "addr", "add", f"{OTHER_ADDR}/24", "dev", vo),
        ]
        for ns, dev in [(head, vh), (other, vo)]:
            # lo too: a node reaches its own address (the head's store) through loopback
            steps += [("-n", ns, "link", "set", "lo", "up"), ("-n", ns, "link", "set", dev, "up")]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                raise RuntimeError(f"ip {' '.join(step)}: {r.stderr.strip()}")
        # `ip netns exec` needs to mount /sys in a new mount namespace: not allowed everywhere
        probe = _ip("netns", "exec", head, "true")
        if probe.returncode != 0:
            pytest.skip(f"cannot run in a network namespace: {probe.stderr.strip()}")
    except BaseException:
        _delete_namespaces(head, other)
        raise
    return head, other


def _delete_namespaces(*names: str) -> None:
    for name in names:
        _ip("netns", "del", name)


def _stop(procs: list[subprocess.Popen], namespaces: tuple[str, ...]) -> None:
    """End what the test started: torchrun stops its workers on SIGTERM; anything still in
    the test's namespaces after that (workers run in sessions of their own) is killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)
    for ns in namespaces:
        for pid in _ip("netns", "pids", ns).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


def test_two_nodes_in_network_namespaces_equal_one_process(ct_store, tmp_path, monkeypatch):
    tag = str(os.getpid() % 100000)
    head, other = _two_namespaces(tag)
    run = tmp_path / "two-nodes"  # one path on the shared file system, as the docs require
    train = ["--data", str(ct_store), "--out", str(run), *TINY, *DDP_EXTRA, "dist.timeout_min=1"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # 2 workers (and 2 agents) share the machine
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    try:
        for ns, addr, dev, is_host in [
            (head, HEAD_ADDR, f"rv{tag}h", 1),
            (other, OTHER_ADDR, f"rv{tag}o", 0),
        ]:
            # docs/distributed.md, "Several nodes", word for word but for the entry point
            cmd = [
                *_torchrun(),
                "--nnodes", "2",
                "--nproc-per-node", "1",
                "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"{HEAD_ADDR}:{RDZV_PORT}",
                "--rdzv-id", f"test-{tag}",
                "--rdzv-conf", f"is_host={is_host},join_timeout=60",
                "--local-addr", addr,
                str(Path(__file__)), "pretrain", *train,
            ]  # fmt: skip
            log = tmp_path / f"{ns}.log"
            logs.append(log)
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", ns, *cmd],
                        env={**env, "GLOO_SOCKET_IFNAME": dev},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + NODE_TIMEOUT_S
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # reported, then killed
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        texts = [log.read_text() for log in logs]
        report = "\n".join(
            f"--- {log.name}\n{t[-3000:]}" for log, t in zip(logs, texts, strict=True)
        )
        assert [p.returncode for p in procs] == [0, 0], report
    finally:
        _stop(procs, (head, other))
        _delete_namespaces(head, other)
    assert "waiting for 2 processes to join at" in texts[0]
    assert "process group ready: 2 ranks in" in texts[0] + texts[1]  # on the node of rank 0
    assert "warning: MASTER_ADDR" not in texts[0] + texts[1]  # --local-addr did its job

    # one process on the global batch, in this process
    from radengine.models import registry

    monkeypatch.setitem(registry._MODELS, "test_nobn", lambda **kw: _NoBN(**kw))
    overrides = [*TINY, *DDP_EXTRA, f"data.store={ct_store}", f"train.out={tmp_path / 'one'}"]
    one = pretrain(load_pretrain_config(overrides=overrides))
    two_w = torch.load(run / "encoder.pt", weights_only=True)
    one_w = torch.load(tmp_path / "one" / "encoder.pt", weights_only=True)
    for k in one_w:
        torch.testing.assert_close(two_w[k], one_w[k], rtol=1e-5, atol=1e-6, msg=k)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == one.steps == 3
    assert summary["loss"] == pytest.approx(one.loss, rel=1e-5)
    torch.manual_seed(0)  # the weights moved: not two untouched inits compared
    assert not torch.allclose(one_w["net.0.weight"], _NoBN().net[0].weight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_rank_fails_within_the_timeout_naming_the_key(ct_store, tmp_path):
    # rank 0 of 2 started, rank 1 never: torch's default would wait 30 silent minutes
    env = {
        **os.environ,
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    cmd = [sys.executable, "-m", "radengine.cli", "pretrain", "--data", str(ct_store)]
    cmd += ["--out", str(tmp_path / "run"), *TINY, "dist.timeout_min=0.1"]  # 6 s
    start = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert r.returncode == 2, r.stderr
    assert f"waiting for 2 processes to join at 127.0.0.1:{env['MASTER_PORT']}" in r.stderr
    assert "(rank 0 of 2, timeout 0.1 min: dist.timeout_min)" in r.stderr
    assert "error: the process group did not form: rank 0 of 2" in r.stderr
    assert "or raise dist.timeout_min" in r.stderr and "Traceback" not in r.stderr
    assert took < 60  # the store gives up after the 6 s timeout; the rest is start-up
    assert not (tmp_path / "run").exists()  # nothing was written before the group formed


def test_joining_without_an_address_or_with_a_bad_timeout_is_a_config_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT are not both set"):
        distributed.setup("cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ConfigError, match=r"'dist\.timeout_min' must be > 0"):
        distributed.setup("cpu", timeout_min=0)
    with pytest.raises(ConfigError, match=r"'dist\.timeout_min' must be > 0"):
        load_pretrain_config(overrides=["dist.timeout_min=0"])
    assert load_pretrain_config().dist.timeout_min == 10


# name resolution without DNS: a head node whose /etc/hosts maps its name to loopback
HOSTS = {"head-node": "127.0.1.1", "good-node": "10.213.0.1"}


@pytest.mark.parametrize(
    "addr, node, local_world, warned",
    [
        ("localhost", 0, 1, True),  # the same loopback name reaches every node
        ("127.0.0.1", 1, 1, True),
        ("head-node", 1, 1, True),  # node 1 resolves the head's name to itself
        ("head-node", 0, 1, False),  # the head may resolve its own name so; others may not
        ("localhost", 1, 2, False),  # every process on this machine: loopback is right
        ("good-node", 1, 1, False),
        ("10.213.0.1", 1, 1, False),
        ("unknown-node", 1, 1, False),  # unresolvable: init_process_group reports it
    ],
)
def test_a_loopback_master_address_on_several_nodes_is_warned(
    addr, node, local_world, warned, monkeypatch
):
    def getaddrinfo(host, port, *args, **kwargs):
        if host not in HOSTS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (HOSTS[host], 0))]

    monkeypatch.setattr(distributed.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("GROUP_RANK", str(node))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    note = distributed._unreachable_master_note(addr, 2)
    assert (note is not None) == warned
    if warned:
        assert f"MASTER_ADDR {addr} is a loopback address" in note and "--local-addr" in note


if __name__ == "__main__":
    _register_nobn()
    sys.exit(main(sys.argv[1:]))
