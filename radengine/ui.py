"""Serving the MLflow UI for ``radengine ui`` (through :func:`radengine.tracking.run_ui`).

The server (``mlflow ui``: a CLI process that starts uvicorn and its workers) runs in its own
process group, so that stopping ``radengine ui`` stops all of it:

- The port is checked before anything starts: a port in use is a :class:`UiError` that
  suggests a free one, instead of a server that dies in its log while the command exits 0.
- SIGINT (Ctrl-C), SIGTERM and SIGHUP sent to ``radengine ui`` are forwarded to the server's
  process group; a server still running 10 s later is killed. Nothing is left listening.
- A ``radengine ui`` that dies without a chance to forward anything (SIGKILL, the OOM
  killer) takes the server with it too: on Linux the server's group is led by a small guard
  (:func:`_guard`, ``python -m radengine.ui``) that the kernel signals when its parent dies
  (``PR_SET_PDEATHSIG``) and that then stops the whole group.
- The URL to open is printed once the server accepts connections.
- The server's start-up chatter (INFO lines, the deprecation warnings its dependencies emit
  on import) is not shown; anything else it prints (errors, tracebacks) is, and when it
  exits early its last lines come with the error.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import IO

from radengine.errors import UserError

__all__ = ["UiError", "check_port", "free_port_near", "is_noise", "serve", "url"]

# How long a stopped server gets to shut down before its process group is killed.
STOP_TIMEOUT_S = 10.0
# How long to wait for the server to accept connections before telling the user it is slow.
SLOW_START_S = 120.0

# Lines of the server's output that are start-up chatter, not news for the user:
# log lines at INFO or DEBUG level (MLflow's "2026/01/01 10:00:00 INFO ..." and uvicorn's
# "INFO:     ..."), Python warnings and the source line printed under each, and two notices
# MLflow 3 prints on every start.
_NOISE = re.compile(
    r"""^(?:
        (?:\d{4}/\d\d/\d\d\ \d\d:\d\d:\d\d\ )?(?:INFO|DEBUG)\b   # log lines below WARNING
      | \S+:\d+:\ \w*(?:Warning|DeprecationWarning)\b            # warnings.showwarning()
      | \ \ \S                                                   # ...and its source line
      | Registry\ store\ URI\ not\ provided
      | \[MLflow\]\ Security\ middleware\ enabled
    )""",
    re.VERBOSE,
)

# Python warnings the server's dependencies print on import (starlette's
# StarletteDeprecationWarning under MLflow 3, for one); they say nothing to the user.
_CHILD_WARNINGS = (
    "ignore::DeprecationWarning,ignore::PendingDeprecationWarning,ignore::FutureWarning"
)


class UiError(UserError, RuntimeError):
    """The MLflow UI cannot be served: mlflow missing, port in use, server failed to start."""


# MLflow 3.x's UI opens experiments in its GenAI view (traces, token usage) until the user
# flips its "Model training" switch, which it keeps in the browser; the experiment tag
# mlflow.experimentKind does not choose the view (3.17). This route opens the experiment
# list in the training view, where radengine's runs are.
TRAINING_VIEW = "/#/experiments?workflowType=machine_learning"


def url(host: str, port: int) -> str:
    """The address to open in a browser for a server bound to ``host:port``.

    Args:
        host: The host the server binds (``0.0.0.0`` and ``::`` are shown as 127.0.0.1 and
            ``[::1]``: the browser on this machine reaches them there).
        port: The TCP port.

    Returns:
        ``http://HOST:PORT``.
    """
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _bind_address(host: str, port: int) -> tuple[int, tuple]:
    """(address family, socket address) for binding ``host:port``.

    Raises:
        UiError: ``host`` is not a name or address of this machine.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise UiError(
            f"--host {host}: not an address of this machine ({exc.strerror}); "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    family, _, _, _, address = infos[0]
    return family, address


def _port_taken(host: str, port: int) -> bool:
    """Whether a server would fail to listen on ``host:port`` because it is in use."""
    family, address = _bind_address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As uvicorn binds: with SO_REUSEADDR, so only a listening socket blocks the port
        # (not the TIME_WAIT left by a server that just stopped).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise UiError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return False


def free_port_near(host: str, port: int, tries: int = 50) -> int | None:
    """The first free port after ``port`` (within ``tries``), to suggest to the user.

    Args:
        host: The host to bind.
        port: The port that was taken.
        tries: How many following ports to try.

    Returns:
        A port, or None when none of them is free.
    """
    for candidate in range(port + 1, min(port + 1 + tries, 65536)):
        if not _port_taken(host, candidate):
            return candidate
    return None


def check_port(host: str, port: int) -> None:
    """Make sure a server can listen on ``host:port``.

    Args:
        host: The host to bind.
        port: The TCP port.

    Raises:
        UiError: The port is out of range or in use (the message suggests ``--port N`` with
            a free port), or ``host`` is not an address of this machine.
    """
    if not 1 <= port <= 65535:
        raise UiError(f"--port {port}: a port is a number from 1 to 65535")
    if _port_taken(host, port):
        free = free_port_near(host, port)
        hint = f"use --port {free} (free)" if free else "use --port N with a free port"
        raise UiError(
            f"port {port} on {host} is already in use (another MLflow UI or server?); {hint}, "
            f"or stop what listens there"
        )


def is_noise(line: str) -> bool:
    """Whether a line of the server's output is start-up chatter (see the module docs)."""
    return bool(_NOISE.match(line))


def _accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    family, address = _bind_address(host, port)
    if family == socket.AF_INET and address[0] == "0.0.0.0":
        address = ("127.0.0.1", port)
    elif family == socket.AF_INET6 and address[0] == "::":
        address = ("::1", port, 0, 0)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(address) == 0


class _Output:
    """The server's output: kept (its last lines) for the error message of a failed start,
    held back until the server is up, then copied to ``out`` as it comes, less the noise
    (all of it, at once, with ``verbose``)."""

    def __init__(self, out: IO[str], verbose: bool) -> None:
        self.out = out
        self.verbose = verbose
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self._held: list[str] = []
        self._live = False
        self._lock = threading.Lock()

    def pump(self, stream: IO[bytes]) -> None:
        """Read ``stream`` to its end (run in a thread)."""
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                self.tail.append(line)
                if self.verbose or (self._live and not is_noise(line)):
                    print(line, file=self.out, flush=True)
                elif not is_noise(line):
                    self._held.append(line)
        stream.close()

    def go_live(self) -> None:
        """The server is up: show what it said that was not noise, and what it says next."""
        with self._lock:
            for line in self._held:
                print(line, file=self.out, flush=True)
            self._held.clear()
            self._live = True

    def reason(self) -> str:
        """Why the server stopped, from its last lines: its ERROR log lines, else the last
        line of its traceback (``SomeError: message``)."""
        lines = list(self.tail)
        errors = [_LOG_PREFIX.sub("", x).strip() for x in lines if " ERROR " in f" {x} "]
        errors = list(dict.fromkeys(x for x in errors if x))
        if errors:
            return "; ".join(errors[-3:])
        for line in reversed(lines):
            if line.strip() and not line.startswith((" ", "\t", "Traceback", "During handling")):
                return line.strip()
        return "it printed nothing"


# "2026/01/01 10:00:00 ERROR mlflow.cli: " and uvicorn's "ERROR:    " prefixes.
_LOG_PREFIX = re.compile(r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?ERROR(?: [\w.]+)?:\s*")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def serve(
    argv: Sequence[str],
    host: str,
    port: int,
    *,
    verbose: bool = False,
    env_defaults: Mapping[str, str] | None = None,
    out: IO[str] | None = None,
) -> int:
    """Run a server command in the foreground until it exits or this process is stopped.

    Args:
        argv: The server's command line (``tracking.ui_command``).
        host: The host it binds.
        port: The port it listens on (checked first).
        verbose: Show every line the server prints, start-up chatter included.
        env_defaults: Environment variables for the server, unless already set.
        out: Where the URL and the server's lines go (default sys.stdout for the URL,
            sys.stderr for the server's lines).

    Returns:
        The server's exit code when it stops by itself; 128 + the signal number when
        ``radengine ui`` was stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129).

    Raises:
        UiError: The port is in use or invalid, or the server exited with an error (the
            message gives the reason from its output: its ERROR lines or its exception).
    """
    check_port(host, port)
    env = {**(env_defaults or {}), **os.environ}
    if not verbose:
        env["PYTHONWARNINGS"] = _CHILD_WARNINGS
    stopped_by: list[int] = []
    group: list[int] = []  # the server's process group, once it exists

    def forward(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signum)
        if group:
            _signal_group(group[0], signal.SIGTERM)

    # Handlers first, so that no signal between the start and here orphans the server.
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in handled}
    guarded = [sys.executable, "-m", "radengine.ui", *argv] if _CAN_GUARD else list(argv)
    try:
        proc = subprocess.Popen(
            guarded,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: uvicorn's workers included
        )
    except BaseException:
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise
    pgid = proc.pid
    group.append(pgid)
    if stopped_by:  # stopped while it was starting
        _signal_group(pgid, signal.SIGTERM)
    assert proc.stdout is not None
    say = sys.stdout if out is None else out
    output = _Output(sys.stderr if out is None else out, verbose)
    pump = threading.Thread(target=output.pump, args=(proc.stdout,), daemon=True)
    pump.start()
    try:
        start, slow_said = time.monotonic(), False
        while proc.poll() is None and not stopped_by:
            if _accepts(host, port):
                output.go_live()
                print(
                    f"MLflow UI: open {url(host, port)}{TRAINING_VIEW}   (Ctrl-C stops it)",
                    file=say,
                    flush=True,
                )
                break
            if not slow_said and time.monotonic() - start > SLOW_START_S:
                print(
                    f"(the MLflow UI is still starting; it will be at {url(host, port)})", file=say
                )
                slow_said = True
            time.sleep(0.2)
        while proc.poll() is None:
            if stopped_by:
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    _signal_group(pgid, signal.SIGKILL)
                    proc.wait()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # an unexpected error here: leave nothing running
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                proc.wait()
        _stop_stragglers(pgid)
        pump.join(timeout=5)
    if stopped_by:
        return 128 + stopped_by[0]
    code = proc.returncode
    if code != 0:
        hint = "" if verbose else "; `radengine ui --verbose` shows all it printed"
        raise UiError(
            f"the MLflow UI server stopped with exit code {code}: {output.reason()} "
            f"(command: {' '.join(argv)}){hint}"
        )
    return 0


def _stop_stragglers(pgid: int) -> None:
    """Stop what is left of the server's process group (workers of a server whose main
    process has exited), SIGTERM first, SIGKILL after STOP_TIMEOUT_S."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    _signal_group(pgid, signal.SIGTERM)
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


# Linux's prctl(PR_SET_PDEATHSIG, sig): the kernel sends sig to this process when the thread
# that started it exits, however it exits.
_PR_SET_PDEATHSIG = 1
_CAN_GUARD = sys.platform.startswith("linux")


def _guard(argv: Sequence[str]) -> int:
    """Lead the server's process group and stop all of it when ``radengine ui`` goes away.

    Runs as ``python -m radengine.ui SERVER_ARGV...`` in the group ``serve`` starts. It asks
    the kernel for SIGTERM when its parent dies, so even a SIGKILLed ``radengine ui`` leaves
    no server behind; on SIGTERM/SIGINT/SIGHUP (forwarded, or from the kernel) it sends
    SIGTERM to the whole group, gives the server STOP_TIMEOUT_S, then SIGKILLs what is
    left. Returns the server's exit code."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    parent = os.getppid()
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(signum)
            _signal_group(os.getpgrp(), signal.SIGTERM)  # this process ignores the echo

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    server = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
    if parent == 1 or os.getppid() != parent:  # the parent died before prctl took effect
        stop(signal.SIGTERM, None)
    deadline: float | None = None
    while True:
        try:
            return server.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if not stopping:
                continue
            if deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT_S
            elif time.monotonic() > deadline:
                _signal_group(os.getpgrp(), signal.SIGKILL)  # this process included


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
