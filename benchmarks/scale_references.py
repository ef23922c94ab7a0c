"""Reference-model training on the scale-out backends (issue 15), ratios measured in one run.

Trains one DP-SGD target on the demo's data (default sizes), then the same ``--models`` reference
models four ways into fresh copies of the run directory: serial with torch's default threads (what
`dp-audit run` did before scale-out), serial with one thread per task, the local process pool
(`--workers`, default every core), and a local Ray with as many CPUs. Prints wall times, the
speed-ups of the pool over both serial baselines (target >= 1.7 on 2 cores, goal >= 1.8), Ray's
overhead over the pool, and whether every backend wrote identical files. Also the fixed cost of
one pool worker (spawn, imports, the shared preparation), measured alone in a fresh process: each
worker pays it once, the serial run never, so the pool's speed-up grows with the work per worker.

Usage: python benchmarks/scale_references.py [--models 8] [--workers 2] [--epochs 3] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path


def _worker_startup(config: dict, cache: str) -> tuple[float, float]:
    """In a fresh spawned process: seconds to import the reference code, then to prepare."""
    t0 = time.perf_counter()
    import dp_audit.reference as ref
    from dp_audit.config import run_config_from_dict

    t1 = time.perf_counter()
    ref._prepared(run_config_from_dict(config), Path(cache))
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="0: every core")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each model (default: train.epochs' default)")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import torch

    from dp_audit.config import run_config_from_dict
    from dp_audit.reference import train_references
    from dp_audit.scale import ScaleConfig
    from dp_audit.scale.config import default_workers
    from dp_audit.trainers.base import train_run

    workers = args.workers or default_workers()
    root = Path(tempfile.mkdtemp(prefix="dp-audit-bench-scale-"))
    try:
        cfg = run_config_from_dict({"trainer": "dpsgd", "model": {"cache_dir": str(args.cache)},
                                    "canaries": {"m": 100}, "train": {"epochs": args.epochs, "progress": False},
                                    "privacy": {"epsilon": 3.0}})
        run = train_run(cfg, root / "run", progress=False)
        manifest = json.loads((run / "manifest.json").read_text())

        def timed(name: str, scale: ScaleConfig) -> tuple[float, list[bytes]]:
            dest = root / name
            shutil.copytree(run, dest)
            t0 = time.perf_counter()
            paths = train_references(dest, manifest, n_models=args.models, seed=0, progress=False, scale=scale)
            dt = time.perf_counter() - t0
            print(f"  {name:<22} {dt:7.1f} s", flush=True)
            return dt, [p.read_bytes() for p in paths]

        print(f"{args.models} reference models (DP-SGD, demo data, {args.epochs} epoch(s)); {workers} workers; "
              f"torch default threads {torch.get_num_threads()}")
        results = {
            "serial, default threads": timed("serial-threads", ScaleConfig(workers=1, threads=torch.get_num_threads())),
            "serial, 1 thread": timed("serial-1", ScaleConfig(workers=1)),
            "local pool": timed("local", ScaleConfig(workers=workers)),
        }
        if not args.no_ray:
            results["ray (local)"] = timed("ray", ScaleConfig(backend="ray", workers=workers))
        import concurrent.futures as cf
        import multiprocessing

        from dp_audit.trainers.base import default_cache_root

        cfg_run = run_config_from_dict(manifest["config"])
        with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            t_spawn = time.perf_counter()
            imp, prep = ex.submit(_worker_startup, manifest["config"], str(default_cache_root(run, cfg_run))).result()
            t_spawn = time.perf_counter() - t_spawn
        print(f"one worker's start-up alone: {t_spawn:.1f} s (imports {imp:.1f} s, preparation {prep:.1f} s); "
              f"one model serially: {results['serial, 1 thread'][0] / args.models:.1f} s")
        pool = results["local pool"][0]
        print(f"speed-up local pool vs serial (default threads): {results['serial, default threads'][0] / pool:.2f}")
        print(f"speed-up local pool vs serial (1 thread):        {results['serial, 1 thread'][0] / pool:.2f}")
        if "ray (local)" in results:
            print(f"Ray / local pool wall time:                       {results['ray (local)'][0] / pool:.2f}")
        same = {name: files == results["serial, 1 thread"][1] for name, (_, files) in results.items()}
        print("identical files to serial (1 thread): " + ", ".join(f"{k}: {v}" for k, v in same.items()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
