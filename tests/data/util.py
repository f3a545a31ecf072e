"""Helpers shared by the data tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, for "identical store" comparisons."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def kill_when_exists(code: str, marker: Path, timeout: float = 120.0) -> None:
    """Run ``code`` in a fresh Python, SIGKILL it as soon as ``marker`` exists."""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
