"""``radengine weights import``: a published checkpoint file -> an MLflow model.

The file is read with ``torch.load(weights_only=True)`` (no code runs), converted onto
radengine's ResNet by :func:`radengine.eval.weights.load_pretrained` (layout detected or
``--format``; heads dropped; shapes checked), and logged as an MLflow model of a run tagged
``stage=import`` in experiment ``radengine-weights`` (params: the architecture, input
channels, the file's name, size and SHA-256, the layout; artifact: the import report), then
registered under ``--name``. The printed ``models:/<id>`` URI is what ``radengine eval
--init`` takes; study B's 21 initialisations come in this way, one file each, from files the
user already has (nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radengine.eval.common import EvalError
from radengine.eval.weights import ImportReport

__all__ = ["ImportResult", "import_weights"]


@dataclass
class ImportResult:
    arch: str
    run_id: str
    model_uri: str
    registered_uri: str | None
    report: ImportReport


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def import_weights(
    file: str | Path,
    *,
    fmt: str = "auto",
    name: str | None = None,
    arch: str | None = None,
    key: str | None = None,
    in_chans: int = 3,
    strict: bool = True,
    uri: str | None = None,
    experiment: str = "radengine-weights",
) -> ImportResult:
    """Convert ``file`` and log it as a (registered) MLflow model.

    Raises:
        EvalError: unreadable file, unknown architecture, weights that do not fit, no mlflow.
    """
    from radengine import tracking
    from radengine.eval.init import _load_file, infer_arch, nested_keys
    from radengine.eval.weights import load_pretrained
    from radengine.models import create_model

    path = Path(file)
    if not path.is_file():
        raise EvalError(f"{path} does not exist")
    if not tracking.mlflow_available():
        raise EvalError(f"weights import logs an MLflow model: {tracking.INSTALL_HINT}")
    data = _load_file(path)
    if arch is None:
        arch = infer_arch(nested_keys(data)) if isinstance(data, dict) else None
        if arch is None:
            raise EvalError(
                f"cannot tell the ResNet in {path} from its keys; "
                "pass --arch (resnet18, resnet34, resnet50, resnet101)"
            )
    try:
        model = create_model(arch, num_classes=0, in_chans=in_chans)
    except ValueError as exc:
        raise EvalError(f"--arch: {exc}") from None
    try:
        report = load_pretrained(model, data, fmt=fmt, key=key, strict=strict)
    except ValueError as exc:
        raise EvalError(f"{path}: {exc}") from None
    name = name or re.sub(r"[^\w.\-]", "_", path.stem)
    tracker = tracking.Tracker(uri, experiment)
    run_id = tracker.start(
        run_name=f"import-{name}",
        tags={
            "stage": "import",
            "init": name,
            "arch": arch,
            "method": f"import:{report.format}",
            "source_file": path.name,
        },
        params={
            "model": {"arch": arch, "in_chans": in_chans},
            "weights": {
                "file": path.name,
                "bytes": path.stat().st_size,
                "sha256": _sha256(path),
                "format": report.format,
                "prefix": report.prefix,
                "key": key,
            },
        },
        system_metrics=False,
    )
    try:
        tracker.log_dict(dataclasses.asdict(report), "import_report.json")
        example = np.zeros((2, in_chans, 64, 64), dtype="float32")
        model_uri = tracker.log_model(
            model, name="encoder", registered_name=name, input_example=example
        )
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    registered = None
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracker.uri)
        versions = client.search_model_versions(f"name = '{name}'")
        if versions:
            registered = f"models:/{name}/{max(int(v.version) for v in versions)}"
    except Exception:  # registration details are a convenience
        registered = None
    return ImportResult(
        arch=arch,
        run_id=run_id or "",
        model_uri=model_uri or "",
        registered_uri=registered,
        report=report,
    )
