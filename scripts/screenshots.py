#!/usr/bin/env python3
"""Screenshots of the MLflow UI for the docs, rendered from the real UI in headless Chromium.

    python scripts/screenshots.py                  # fresh tiny runs, then docs/img/mlflow-*.png
    python scripts/screenshots.py --check          # the same checks, no PNG written
    python scripts/screenshots.py --uri sqlite:////path/mlflow.db   # an existing store
    python scripts/screenshots.py --workdir /tmp/shots   # keep the fresh store (reuse: --uri)

Without ``--uri`` it makes a small tracking store in a temporary folder by running radengine
itself (subprocesses, as a user would): a tiny synthetic CT store (``radengine synth ct``), a
short pretraining (``radengine pretrain --domain ct``), ``radengine eval linear`` and ``eval
knn`` of that pretraining and of ``--init scratch`` (same settings, seeds 0 and 1) and
``radengine report``.
It then serves that store with ``radengine ui`` on a free loopback port, waits until the UI
answers, renders each page with headless Chromium (``--dump-dom`` to check that the page shows
what it should, ``--screenshot`` for the PNG, a fixed window and ``--virtual-time-budget``),
checks that each PNG is not blank, and stops the UI with SIGTERM (also on errors and when
this script is interrupted). The pages (:func:`pages`):

- ``mlflow-runs.png``: the eval experiment's runs table in the training view (Model
  training), filtered on the study tag, with the test metrics as columns (``SHARED_VIEW``);
- ``mlflow-run.png``: the pretraining run's page: its metrics, parameters, tags, dataset;
- ``mlflow-report.png``: the report run's artifacts with the transfer figure
  (``report/report.png``) open.

Needs Debian's ``chromium`` (``apt-get install chromium``; another binary can be given with
``--chromium`` or ``$CHROMIUM``) and radengine with mlflow (``pip install -e ".[tracking]"``).
Exit codes: 0 done, 1 a check failed (the message says which page and what was missing),
2 a missing prerequisite (chromium, mlflow) or a bad argument.

tests/test_ui_browser.py imports the helpers (``find_chromium``, ``ui_server``,
``dump_dom``, ...) from this file.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "img"
WINDOW = (1440, 900)
BUDGET_MS = 30000  # --virtual-time-budget: how long the page may take to settle (virtual time:
# a page that waits for nothing takes a few seconds, whatever the budget)
CHROMIUM_TIMEOUT_S = 120.0
UI_START_TIMEOUT_S = 180.0
UI_STOP_TIMEOUT_S = 20.0
# The UI is served on IPv6's loopback where there is one: MLflow 3.17's UI opens its
# "MLflow Assistant" panel on the first visit from localhost, 127.0.0.1 or ::1 (which the page
# sees as "[::1]", so not there), and a screenshot is better without it.
HOSTS = ("::1", "127.0.0.1")

# The tiny runs (settings as in tests/eval/test_eval_cli.py, a few more steps so the
# charts have points): a 10-patient CT store of 32 px slices, 2 epochs capped at 20 steps.
STORE = ["--patients", "10", "--slices", "4", "--size", "32"]
PRETRAIN = [
    "augment.size=32",
    "optim.batch_size=16",
    "optim.epochs=2",
    "data.workers=0",
    "train.progress=false",
    "train.max_steps=20",
    "train.log_every=2",
    "tracking.system_metrics=false",
]
# input.size=32 for both: scratch would otherwise be evaluated at 224 px and the report would
# not compare it with the pretraining (evaluated at its own 32 px).
EVAL = ["progress=false", "input.size=32"]
PROTOCOLS = {"linear": ["linear.epochs=4"], "knn": []}
SEEDS = "0,1"
STUDY = "quickstart"  # the runs' `study` tag (radengine's default)
# The runs page of a store this script made shows a view of the runs table that MLflow calls
# a shared view (JSON in the experiment tag mlflow.sharedViewState.KEY, opened with
# ?viewStateShareKey=KEY, the form of MLflow's share links): the study's runs (a filter on
# the tag) with their test metrics and protocol, init and seed tags as columns. Without it,
# MLflow 3 shows no metric column.
SHARE_KEY = "radengine-docs"
SHARED_VIEW = {
    "searchFilter": f"tags.study = '{STUDY}'",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "selectedColumns": [
        "tags.`protocol`",
        "tags.`init`",
        "tags.`seed`",
        "metrics.`test/accuracy`",
        "metrics.`test/auc_mean`",
    ],
}

# MLflow 3.17's UI shows an experiment in the view of its sidebar switch ("GenAI" or "Model
# training", kept in the browser's local storage, GenAI in a fresh browser), not in the one the
# experiment's `mlflow.experimentKind` tag names; `?workflowType=machine_learning` in the URL
# is that switch set to "Model training", as a user who clicked it sees every page.
TRAINING_VIEW = "workflowType=machine_learning"
# Text of MLflow 3's GenAI experiment view (its overview charts, its navigation): none of it
# may be on a page of the training view.
GENAI_ONLY = ("Detect Issues", "Token Usage", "Evaluation runs", "Playground")


class ScreenshotError(RuntimeError):
    """A page did not render what it should, or the UI did not start (exit 1)."""


class Missing(RuntimeError):
    """A prerequisite is missing: chromium, mlflow (exit 2)."""


# --------------------------------------------------------------------------- chromium


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium binary: ``explicit``, else $CHROMIUM, else /usr/bin/chromium, else
    ``chromium`` / ``chromium-browser`` on PATH.

    Raises:
        Missing: none found; the message names Debian's package.
    """
    for candidate in (explicit, os.environ.get("CHROMIUM")):
        if candidate:
            found = shutil.which(candidate)
            if found:
                return found
            raise Missing(
                f"chromium {candidate!r} (from --chromium or $CHROMIUM) not found; Debian's "
                "package is `chromium` (sudo apt-get install chromium)"
            )
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise Missing(
        "headless Chromium is needed to render the MLflow UI and none was found: install "
        "Debian's package `chromium` (sudo apt-get install chromium), or pass --chromium PATH"
    )


def _chromium(
    chromium: str, url: str, action: Sequence[str], *, window: tuple[int, int], budget_ms: int
) -> str:
    """Run headless Chromium on ``url`` with ``action`` (--dump-dom or --screenshot=...) and
    return its stdout. A fresh profile each time; the whole process group is killed after
    CHROMIUM_TIMEOUT_S."""
    with tempfile.TemporaryDirectory(prefix="radengine-chromium-") as profile:
        argv = [
            chromium,
            "--headless",
            "--no-sandbox",  # as root (CI containers) Chromium refuses to start without it
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--mute-audio",
            f"--user-data-dir={profile}",
            # a --port Chromium refuses by default (22, 25, 6000, ...) is the user's choice
            f"--explicitly-allowed-ports={urllib.parse.urlsplit(url).port or 80}",
            f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={budget_ms}",
            *action,
            url,
        ]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=profile,
        )
        try:
            out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S + budget_ms / 1000)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ScreenshotError(
                f"chromium did not finish rendering {url} within "
                f"{CHROMIUM_TIMEOUT_S + budget_ms / 1000:.0f} s"
            ) from None
        finally:
            _kill_group(proc.pid, signal.SIGKILL)  # helpers it may have left behind
    if proc.returncode != 0:
        tail = "\n".join(err.decode(errors="replace").splitlines()[-15:])
        raise ScreenshotError(f"chromium exited with {proc.returncode} on {url}:\n{tail}")
    return out.decode(errors="replace")


def dump_dom(
    chromium: str, url: str, *, window: tuple[int, int] = WINDOW, budget_ms: int = BUDGET_MS
) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time, as headless Chromium renders it
    (HTML text)."""
    return _chromium(chromium, url, ["--dump-dom"], window=window, budget_ms=budget_ms)


def screenshot(
    chromium: str,
    url: str,
    path: Path,
    *,
    window: tuple[int, int] = WINDOW,
    budget_ms: int = BUDGET_MS,
) -> Path:
    """Render ``url`` to the PNG ``path`` (the window's size) after ``budget_ms`` of virtual
    time."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _chromium(chromium, url, [f"--screenshot={path}"], window=window, budget_ms=budget_ms)
    if not path.is_file():
        raise ScreenshotError(f"chromium wrote no screenshot of {url} to {path}")
    return path


def check_png(path: Path, min_bytes: int = 20_000, min_colours: int = 16) -> str:
    """Make sure the PNG at ``path`` is not blank: at least ``min_bytes`` long and at least
    ``min_colours`` distinct colours, not one flat colour.

    Returns:
        A one-line summary (size, dimensions, colours).

    Raises:
        ScreenshotError: the image is (nearly) blank.
    """
    size = path.stat().st_size
    try:
        from PIL import Image  # matplotlib's own dependency, so radengine always has it
    except ImportError:  # pragma: no cover - fall back to the size alone
        if size < min_bytes:
            raise ScreenshotError(f"{path}: {size} bytes, looks blank") from None
        return f"{size // 1024} KiB"
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 16)
        n = len(colours) if colours is not None else 1 << 16
        dims = f"{rgb.width}x{rgb.height}"
    if size < min_bytes or n < min_colours:
        raise ScreenshotError(
            f"{path}: {size} bytes, {n} colours at {dims}: blank or nearly (the page did not "
            "render; try a larger --budget)"
        )
    return f"{size // 1024} KiB, {dims}, {'>65535' if n == 1 << 16 else n} colours"


def missing_text(dom: str, expected: Sequence[str]) -> list[str]:
    """The strings of ``expected`` that ``dom`` does not contain."""
    return [text for text in expected if text not in dom]


# --------------------------------------------------------------------------- the UI server


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def loopback_host() -> str:
    """The first of HOSTS this machine can listen on."""
    for host in HOSTS:
        try:
            with socket.socket(_family(host)) as s:
                s.bind((host, 0))
            return host
        except OSError:
            continue
    return HOSTS[-1]


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` if a server can listen there, else a free port chosen by the kernel."""
    if preferred:
        with socket.socket(_family(host)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                print(f"port {preferred} is busy; using a free one", file=sys.stderr)
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child, before exec: Linux sends it SIGTERM when this script dies (even by
    SIGKILL), so that `radengine ui` stops its server too."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


@dataclass
class UiServer:
    """A running ``radengine ui``: its process, its URL and the last lines it printed."""

    proc: subprocess.Popen
    host: str
    port: int
    url: str
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100))

    def output(self) -> str:
        return "\n".join(self.lines)


def start_ui(uri: str, port: int, host: str = "127.0.0.1") -> UiServer:
    """Start ``radengine ui --uri URI --host HOST --port PORT`` in the background (its own
    process group; its output kept in ``UiServer.lines``)."""
    argv = [sys.executable, "-m", "radengine.cli", "ui", "--uri", uri, "--host", host]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    name = f"[{host}]" if ":" in host else host
    server = UiServer(proc, host, port, f"http://{name}:{port}")

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            server.lines.append(raw.decode(errors="replace").rstrip())
        proc.stdout.close()

    threading.Thread(target=pump, daemon=True).start()
    return server


def wait_ui(server: UiServer, timeout: float = UI_START_TIMEOUT_S) -> None:
    """Wait until the UI answers ``GET /health`` with 200.

    Raises:
        ScreenshotError: ``radengine ui`` exited first (its output is in the message) or the
            UI did not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            time.sleep(0.2)  # let the pump read the last lines
            raise ScreenshotError(
                f"`radengine ui` exited with {server.proc.returncode} before answering:\n"
                f"{server.output()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ScreenshotError(
        f"the MLflow UI did not answer on {server.url} within {timeout:.0f} s:\n{server.output()}"
    )


def stop_ui(server: UiServer, timeout: float = UI_STOP_TIMEOUT_S) -> int:
    """SIGTERM to ``radengine ui`` (which stops its server's whole process group); SIGKILL to
    its group after ``timeout`` s. Returns its exit code (143 after a clean SIGTERM)."""
    proc = server.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def ui_server(
    uri: str, port: int | None = None, host: str | None = None, tries: int = 3
) -> Iterator[UiServer]:
    """Serve ``uri`` with ``radengine ui`` on a free port of ``host`` (default
    :func:`loopback_host`; ``port`` if it is free), yield the running server once it answers,
    and stop it with SIGTERM on the way out (errors and interrupts included). A port taken
    between choosing and binding it is retried with another one."""
    host = host or loopback_host()
    for attempt in range(tries):
        server = start_ui(uri, free_port(port if attempt == 0 else None, host), host)
        try:
            wait_ui(server)
        except ScreenshotError:
            stop_ui(server)
            if "already in use" in server.output() and attempt + 1 < tries:
                continue
            raise
        except BaseException:
            stop_ui(server)
            raise
        try:
            yield server
        finally:
            stop_ui(server)
        return


# --------------------------------------------------------------------------- the runs


def radengine(*args: str, cwd: Path) -> str:
    """Run ``radengine ARGS...`` (this interpreter's radengine) in ``cwd``; its stdout.

    Raises:
        ScreenshotError: it failed (its output's last lines are in the message).
    """
    argv = [sys.executable, "-m", "radengine.cli", *args]
    print("$ radengine " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise ScreenshotError(f"`radengine {args[0]}` failed ({done.returncode}):\n{tail}")
    return done.stdout


def make_runs(folder: Path) -> str:
    """Fill a fresh SQLite store in ``folder`` with a tiny pretraining, its linear and kNN
    evaluations and those of scratch (same settings, 2 seeds each) and a report, each
    writing its files where it does by default (``folder/runs``); return the tracking URI."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    store = str(folder / "ct-store")
    track = ["--tracking", uri]
    radengine("synth", "ct", "--out", store, *STORE, cwd=folder)
    radengine("pretrain", "--domain", "ct", "--data", store, *track, *PRETRAIN, cwd=folder)
    common = ["--data", store, "--seeds", SEEDS, *track, f"cache.dir={folder / 'features'}"]
    for protocol, overrides in PROTOCOLS.items():
        for init in ([], ["--init", "scratch"]):  # (no --init: the newest pretraining run)
            radengine("eval", protocol, *init, *common, *EVAL, *overrides, cwd=folder)
    radengine("report", *track, cwd=folder)
    share_view(uri)
    return uri


def share_view(uri: str, experiment: str = "radengine-eval") -> None:
    """Store SHARED_VIEW as the shared view SHARE_KEY of ``experiment``."""
    import json

    from radengine.tracking import require_mlflow

    client = require_mlflow().MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ScreenshotError(f"{uri} has no experiment {experiment!r}")
    key = f"mlflow.sharedViewState.{SHARE_KEY}"
    client.set_experiment_tag(exp.experiment_id, key, json.dumps(SHARED_VIEW))


@dataclass
class Page:
    """One page to render: its file name, its route (after ``#``) and the texts its DOM must
    contain (``absent``: must not)."""

    name: str
    route: str
    expect: list[str]
    absent: list[str] = field(default_factory=list)
    window: tuple[int, int] = WINDOW


def pages(uri: str, experiment: str = "radengine-eval") -> list[Page]:
    """The pages to render for the store at ``uri`` (see the module docs).

    Raises:
        ScreenshotError: the store lacks the runs they show.
    """
    from radengine.tracking import require_mlflow

    mlflow = require_mlflow()
    client = mlflow.MlflowClient(uri)

    def runs(name: str, query: str = "") -> tuple[str, list]:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise ScreenshotError(f"{uri} has no experiment {name!r}; make runs first")
        found = client.search_runs(
            [exp.experiment_id], query, order_by=["attributes.start_time DESC"]
        )
        if not found:
            raise ScreenshotError(f"experiment {name!r} in {uri} has no run ({query or 'any'})")
        return exp.experiment_id, found

    eval_id, eval_runs = runs(experiment)
    names = [r.info.run_name for r in eval_runs[:8]]
    if f"mlflow.sharedViewState.{SHARE_KEY}" in client.get_experiment(eval_id).tags:
        route = f"/experiments/{eval_id}/runs?viewStateShareKey={SHARE_KEY}&{TRAINING_VIEW}"
        expect = ["Run Name", "test/accuracy", "init", *names]
    else:  # the experiment's landing page, with MLflow's default columns
        route, expect = f"/experiments/{eval_id}?{TRAINING_VIEW}", ["Run Name", *names]
    result = [Page("mlflow-runs.png", route, expect, list(GENAI_ONLY))]
    pretrain_id, pretrain_runs = runs("radengine-pretrain", "tags.stage = 'pretrain'")
    run = pretrain_runs[0]
    result.append(
        Page(
            "mlflow-run.png",
            f"/experiments/{pretrain_id}/runs/{run.info.run_id}?{TRAINING_VIEW}",
            [run.info.run_name, "Metrics", "train/loss", "knn/accuracy", "Parameters", "Tags"],
            list(GENAI_ONLY),
        )
    )
    report_id, report_runs = runs("radengine-report", "tags.stage = 'report'")
    run = report_runs[0]
    artifact = "artifacts/report/report.png"
    result.append(
        Page(
            "mlflow-report.png",
            f"/experiments/{report_id}/runs/{run.info.run_id}/{artifact}?{TRAINING_VIEW}",
            [run.info.run_name, "report/report.png"],
            list(GENAI_ONLY),
        )
    )
    return result


def render(
    chromium: str,
    base_url: str,
    page: Page,
    out: Path,
    *,
    budget_ms: int = BUDGET_MS,
    save_dom: Path | None = None,
) -> str:
    """Check ``page``'s DOM, then screenshot it to ``out / page.name`` and check the PNG.

    Returns:
        The PNG's summary line.

    Raises:
        ScreenshotError: expected text missing, GenAI-only text present, or a blank PNG.
    """
    url = f"{base_url}/#{page.route}"
    dom = dump_dom(chromium, url, window=page.window, budget_ms=budget_ms)
    if save_dom is not None:
        save_dom.mkdir(parents=True, exist_ok=True)
        (save_dom / f"{Path(page.name).stem}.html").write_text(dom)
    if "<body" not in dom:
        raise ScreenshotError(f"{page.name}: chromium rendered no page at {url}")
    lacking = missing_text(dom, page.expect)
    present = [text for text in page.absent if text in dom]
    if lacking or present:
        raise ScreenshotError(
            f"{page.name}: {url} rendered without {lacking} / with {present} "
            f"({len(dom)} characters of DOM; --save-dom DIR keeps it)"
        )
    path = screenshot(chromium, url, out / page.name, window=page.window, budget_ms=budget_ms)
    return check_png(path)


# --------------------------------------------------------------------------- main


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected WIDTHxHEIGHT, e.g. 1440x900"
        ) from None
    return width, height


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Render the MLflow UI (served by `radengine ui`) in headless Chromium to "
        "the PNG screenshots under docs/img.",
    )
    p.add_argument("--uri", help="tracking store with radengine runs (default: make a fresh one)")
    p.add_argument(
        "--workdir",
        type=Path,
        help="where to make the fresh store (kept; default: a temporary folder)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNGs (docs/img)")
    p.add_argument(
        "--check", action="store_true", help="only verify the pages render; write no PNG"
    )
    p.add_argument(
        "--port", type=int, default=0, help="UI port (default: a free one; a busy one is replaced)"
    )
    p.add_argument("--chromium", help="the Chromium binary (default: $CHROMIUM, /usr/bin/chromium)")
    p.add_argument("--window", type=_size, default=WINDOW, help="window size (default 1440x900)")
    p.add_argument("--budget", type=int, default=BUDGET_MS, help="virtual time per page, ms")
    p.add_argument("--experiment", default="radengine-eval", help="experiment of the runs page")
    p.add_argument("--only", action="append", help="render only this page (e.g. mlflow-runs.png)")
    p.add_argument("--save-dom", type=Path, help="also write each page's DOM here (debugging)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through ui_server: the UI is stopped

    signal.signal(signal.SIGTERM, terminated)
    start = time.monotonic()
    try:
        chromium = find_chromium(args.chromium)
        from radengine.tracking import mlflow_available

        if not mlflow_available():
            raise Missing('the MLflow UI needs mlflow: pip install -e ".[tracking]"')
        with contextlib.ExitStack() as stack:
            uri = args.uri
            if uri is None:
                folder = args.workdir
                if folder is None:
                    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shots-")))
                uri = make_runs(folder)
                print(f"runs made in {time.monotonic() - start:.0f} s: {uri}", file=sys.stderr)
            todo = [p for p in pages(uri, args.experiment) if not args.only or p.name in args.only]
            for page in todo:
                page.window = args.window
            out = args.out
            if args.check:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shots-png-")))
            with ui_server(uri, args.port or None) as server:
                print(f"MLflow UI at {server.url} ({uri})", file=sys.stderr, flush=True)
                for page in todo:
                    summary = render(
                        chromium,
                        server.url,
                        page,
                        out,
                        budget_ms=args.budget,
                        save_dom=args.save_dom,
                    )
                    where = "checked" if args.check else f"wrote {out / page.name}"
                    print(f"{where}: {summary}  (#{page.route})", flush=True)
    except Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
