"""Benchmark end-to-end SimCLR pretraining: radengine's pipeline against a study-style
baseline (DataLoader + per-sample CPU transforms) at the same model, batch, view size and
worker count; img/s and the data-wait fraction of each, and the speedup.

    python benchmarks/bench_pipeline.py [--device cuda] [--arch resnet50] [--size 224]
        [--batch 256] [--steps 30] [--warmup 5] [--workers 8] [--data STORE] [--breakdown]

The same as `radengine bench pipeline`; radengine/engine/pipeline_bench.py explains both
pipelines and how they are timed. Defaults: ResNet-18, batch 64, 96 px on CPU; ResNet-50,
batch 256, 224 px, bf16 on CUDA; the built-in synthetic CT store.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Recorder

from radengine.engine import pipeline_bench as pb


def main(argv: list[str] | None = None) -> int:
    parser = pb.build_parser()
    parser.prog = "bench_pipeline.py"
    parser.add_argument("--out", type=Path, help="CSV path (default results/<device>.csv)")
    args = parser.parse_args(argv)
    if args.csv is not None and args.out is None:
        args.out = args.csv
    settings = pb.resolve(args)
    results = pb.measure(settings, args.only)
    rec = Recorder(pb.OP, settings.device)
    for row in pb.metric_rows(results, settings):
        rec.add(*row)
    path = rec.write(args.out)
    print(pb.summary(results, settings))
    if args.breakdown:
        print(pb.format_breakdown(pb.breakdown(settings), settings))
    rec.print_table(("img_per_s", "data_wait_fraction", "speedup_vs_study_baseline"))
    print(f"\nrows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
