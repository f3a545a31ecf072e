"""`radengine ui`: the port is checked first, the URL is printed once the server answers,
start-up noise is hidden, and stopping the command stops the whole server (issue #12).

The end-to-end test runs a real ``mlflow ui`` on a loopback port (127.0.0.1 only), bounded
to 90 s (~10-20 s on 2 busy cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from radengine import ui
from radengine.cli import build_parser

REPO = Path(__file__).resolve().parents[1]

# What mlflow 3.17's `mlflow ui` prints on a clean start (4 workers), verbatim.
MLFLOW_START = """\
Registry store URI not provided. Using backend store URI.
2026/12/03 07:35:05 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
2026/12/03 07:35:05 INFO mlflow.store.db.utils: Updating database tables
[MLflow] Security middleware enabled with default settings (localhost-only). To allow connections from other hosts, use --host 0.0.0.0 and configure --allowed-hosts and --cors-allowed-origins.
2026/12/03 07:35:06 INFO mlflow.server.jobs.executor_registry: Available backends after discovery: local
2026/12/03 07:35:06 INFO:     Uvicorn running on http://127.0.0.1:5123 (Press CTRL+C to quit)
2026/12/03 07:35:06 INFO:     Started parent process [5158]
/venv/lib/python3.11/site-packages/mlflow/server/fastapi_app.py:23: StarletteDeprecationWarning: starlette.middleware.wsgi is deprecated and will be removed in a future release. Please refer to https://github.com/abersheeran/a2wsgi as a replacement.
  from starlette.middleware.wsgi import WSGIResponder, build_environ
2026/12/03 07:35:19 INFO:     Started server process [5162]
2026/12/03 07:35:19 INFO:     Waiting for application startup.
2026/12/03 07:35:19 INFO:     Application startup complete.
INFO:     127.0.0.1:38248 - "GET / HTTP/1.1" 200 OK
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_start_noise_is_hidden_but_errors_are_not():
    assert all(ui.is_noise(line) for line in MLFLOW_START.splitlines())
    for line in (
        "ERROR:    [Errno 98] error while attempting to bind on address: address already in use",
        "Traceback (most recent call last):",
        "sqlalchemy.exc.OperationalError: unable to open database file",
        "2026/12/03 07:35:05 WARNING mlflow.store: something the user should see",
    ):
        assert not ui.is_noise(line), line


def test_url():
    assert ui.url("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert ui.url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert ui.url("::", 80) == "http://[::1]:80"
    assert ui.url("localhost", 5001) == "http://localhost:5001"


def test_busy_port_is_refused_with_a_free_one_suggested():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ui.UiError, match=rf"port {port} .*in use.*--port \d+") as exc:
            ui.check_port("127.0.0.1", port)
        suggested = int(str(exc.value).split("--port ")[1].split()[0])
        assert suggested != port and _port_free(suggested)
    ui.check_port("127.0.0.1", port)  # free again
    with pytest.raises(ui.UiError, match="--port 0"):
        ui.check_port("127.0.0.1", 0)


FAKE_SERVER = """
import socket, sys, warnings
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("2026/12/03 07:35:06 INFO:     Uvicorn running", flush=True)
warnings.warn("old stuff", DeprecationWarning)
print("a line the user should see", flush=True)
s.accept()[0].close()  # serve's readiness probe; then stop by itself
"""


def test_serve_prints_the_url_and_only_what_matters(tmp_path):
    """With a stand-in server: the URL once it listens, its own lines less the noise."""
    port = _free_port()
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        code = ui.serve([sys.executable, "-c", FAKE_SERVER, str(port)], "127.0.0.1", port, out=f)
    assert code == 0
    text = out.read_text()
    assert f"open http://127.0.0.1:{port}" in text
    assert "a line the user should see" in text
    assert "INFO" not in text and "Warning" not in text and "old stuff" not in text, text
    assert _port_free(port)


def test_a_server_that_fails_to_start_is_an_error_with_its_reason(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text(
        "import sys\n"
        "print('Traceback (most recent call last):')\n"
        "print('  File \"x\", line 1')\n"
        "print('sqlalchemy.exc.OperationalError: unable to open database file')\n"
        "sys.exit(3)\n"
    )
    port = _free_port()
    with pytest.raises(ui.UiError) as exc:
        ui.serve([sys.executable, str(crash)], "127.0.0.1", port, out=sys.stderr)
    message = str(exc.value)
    assert "exit code 3" in message and "unable to open database file" in message
    assert "Traceback" not in message and "--verbose" in message


def test_every_ui_option_has_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["ui"]
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == {"uri", "host", "port", "workers", "verbose"}
    for action in options:
        assert action.help and len(action.help) > 10, action.dest


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = {int(k) for k in f.read().split()}
                todo.extend(kids - found)
                found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie no longer runs (nor listens)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_ui_serves_prints_the_url_and_leaves_no_server_when_stopped(tmp_path, stop):
    """SIGTERM: forwarded, exit 143. SIGKILL (nothing can be forwarded): the server's guard
    is told by the kernel and stops the group. Either way no server process is left."""
    pytest.importorskip("mlflow")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "radengine.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that cleanup can reach everything if the test fails
    )
    server: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if "MLflow UI: open" in line:
                break
        assert f"http://127.0.0.1:{port}" in line, f"no URL printed; last line {line!r}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200  # up when the URL is printed
        server = _descendants(proc.pid)
        assert server, "the server runs as a child process"

        proc.send_signal(stop)  # radengine ui itself, not its process group
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == (128 + stop if stop == signal.SIGTERM else -stop)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in server):
            time.sleep(0.1)
        assert not [p for p in server if _alive(p)], "server processes left running"
        assert _port_free(port), f"port {port} still in use after radengine ui stopped"
        output = line + rest
        assert "Warning" not in output and "INFO" not in output, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in server:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


def test_ui_exits_2_when_the_port_is_taken(tmp_path):
    """The process, not only run_command: exit 2, the message, no server started (~2 s)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "radengine.cli", "ui", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done
    assert f"port {port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr
