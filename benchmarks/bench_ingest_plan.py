"""Benchmark the CT ingest planner's memory on an archive-sized file listing.

    python benchmarks/bench_ingest_plan.py [--files 12034617] [--series 90663] [--before REV]

RadNet-12M is 12,034,617 CT slices from 90,663 scans: about 12 million DICOM files. Reading
that many headers here is not possible, so the listing is simulated: a PathTable of
``--files`` paths like ``/archive/p012345/s098765/IM012345.dcm`` in ``--series`` folders
(the walk's output), and ``dicom._scan_chunk`` replaced by a function that returns each
file's header verdict from its path (series UID from the folder, SOPInstanceUID from the
name, 1 frame) without I/O. What remains is exactly the planner: the scan's bookkeeping,
the duplicate check, the grouping into series and the shard plan. Each run is a fresh
process; its peak resident memory (VmHWM) less the same process's memory before the scan
is the planner's.

A second run makes every ``--skip-every``-th file (default 2: half the archive) a skipped
non-CT file, whose entries the scan spools to a temporary file beyond
``dicom.SKIPPED_IN_MEMORY`` (they are read back once, as ingest does when it writes
errors.jsonl).

``--before REV`` also measures radengine/data/dicom.py of git revision REV (the planner
before it became compact) on the same listing, given as the Python list of path strings it
walked into; at 1.2M files by default (``--before-files``), since it needs several GB at
12M.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


def _fake_chunk(paths, skip_every=0, skipped_type=None):
    out = []
    for p in paths:
        folder, name = p.rsplit("/", 1)
        if skip_every and int(name[2:8]) % skip_every == 0:
            out.append(skipped_type(p, "modality MR, not CT"))
        else:
            out.append(
                (p, "1.2.826.0.1." + folder[-6:], "1.2.826.0.2." + folder[-6:] + name[2:8], 1)
            )
    return out


def child(files: int, series: int, module_path: str | None, skip_every: int = 0) -> dict:
    from radengine.data.ingest import Unit, default_shard_slices, plan_shards
    from radengine.data.privacy import Pseudonymizer

    if module_path is None:
        from radengine.data import dicom
    else:
        spec = importlib.util.spec_from_file_location("dicom_before", module_path)
        dicom = importlib.util.module_from_spec(spec)
        sys.modules["dicom_before"] = dicom  # dataclasses look their module up
        spec.loader.exec_module(dicom)
    dicom._scan_chunk = lambda paths: _fake_chunk(paths, skip_every, dicom.Skipped)
    dicom._import_pydicom = lambda: None
    per = files // series
    base = _rss()
    t0 = time.perf_counter()
    if module_path is None:
        from radengine.data.paths import PathTable

        listing = PathTable()
        for s in range(series):
            n = per + (1 if s < files - per * series else 0)
            listing.add(f"/archive/p{s // 3:06d}/s{s:06d}", [f"IM{k:06d}.dcm" for k in range(n)])
    else:
        listing = [
            f"/archive/p{s // 3:06d}/s{s:06d}/IM{k:06d}.dcm"
            for s in range(series)
            for k in range(per + (1 if s < files - per * series else 0))
        ]
        dicom._walk = lambda paths, skipped: paths
    listed = _rss() - base
    refs, skipped = dicom.scan_dicom(listing, Pseudonymizer(b"k" * 32))
    n_skipped = sum(1 for _ in skipped)  # read back once, as ingest does
    units = [Unit("dicom", f"d:{r.uid_key}", r.frames, r) for r in refs]
    shards = plan_shards(units, default_shard_slices(units))
    seconds = time.perf_counter() - t0
    return {
        "files": sum(r.frames for r in refs), "series": len(refs), "skipped": n_skipped,
        "shards": len(shards), "seconds": seconds, "listing_bytes": listed,
        "peak_bytes": _hwm() - base,
    }  # fmt: skip


def _run(files: int, series: int, module: str | None, skip_every: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", "--files", str(files), "--series", str(series),
           "--skip-every", str(skip_every)]  # fmt: skip
    if module:
        cmd += ["--module", module]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the planner run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12_034_617)
    parser.add_argument("--series", type=int, default=90_663)
    parser.add_argument("--before", metavar="REV", help="also measure dicom.py of this revision")
    parser.add_argument("--before-files", type=int, default=1_203_462)
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    parser.add_argument(
        "--skip-every",
        type=int,
        default=2,
        metavar="N",
        help="a second run where every Nth file is skipped (MR): 0 for none",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.files, args.series, args.module, args.skip_every)))
        return 0

    import torch
    from _common import Recorder

    rec = Recorder("ingest_plan", torch.device("cpu"))
    mib = 1 / 2**20
    runs = [("radengine", args.files, None, 0)]
    if args.skip_every:
        runs.append((f"radengine, 1 in {args.skip_every} files skipped", args.files, None,
                     args.skip_every))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            old = Path(tmp) / "dicom_before.py"
            text = subprocess.run(
                ["git", "show", f"{args.before}:radengine/data/dicom.py"],
                capture_output=True, text=True, check=True, cwd=ROOT,
            ).stdout  # fmt: skip
            old.write_text(text)
            series = max(1, round(args.series * args.before_files / args.files))
            runs += [("radengine", args.before_files, None, 0),
                     (f"before ({args.before})", args.before_files, str(old), 0)]  # fmt: skip
        for backend, files, module, skip_every in runs:
            series = max(1, round(args.series * files / args.files))
            r = _run(files, series, module, skip_every)
            shape = f"{files} files, {series} series"
            for metric, unit, value in [
                ("planner peak memory", "MiB", r["peak_bytes"] * mib),
                ("of which the listing", "MiB", r["listing_bytes"] * mib),
                ("bytes per file", "B", r["peak_bytes"] / files),
                ("scan + plan time", "s", r["seconds"]),
                ("shards planned", "shards", r["shards"]),
                ("files skipped", "files", r["skipped"]),
            ]:
                rec.add(backend, shape, "-", metric, unit, value, value, value)
    rec.print_table(tuple(dict.fromkeys(r["metric"] for r in rec.rows)))
    print(f"\nrows appended to {rec.write(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
