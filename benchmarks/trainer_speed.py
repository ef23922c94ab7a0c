"""Cost ratios of the issue-5 trainers, measured in one run on the demo model (issue 5):

1. DP-ZO step time / non-private backprop step time (same batch, same tuning; target < 1.0);
2. DP-ZO peak memory / inference memory (target < 1.3), and backprop's for contrast;
3. DP-Flat step (paper AWP active: one extra forward/backward on the first micro-batch) /
   DP-SGD step (target < 1.5), with a micro-batch of --micro-batch examples (a quarter of the
   logical batch, as with gradient accumulation) and with the whole logical batch as micro-batch,
   and the per-example AWP variant (an extra forward/backward on the whole batch).

Times: medians over interleaved steps after warm-up. Memory: each workload runs in a fresh
subprocess; after loading the model the kernel's peak-RSS counter is reset
(/proc/self/clear_refs), and "memory" = bytes of the model's parameters + the peak RSS increase
during the workload (Linux only). Usage: python benchmarks/trainer_speed.py [--steps 20]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def setup(tuning: str, cache: Path, batch_size: int, virtual_tokens: int):
    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import prepare

    cfg = run_config_from_dict({"trainer": "dpflat" if tuning == "prefix" else "dpsgd",
                                "model": {"tuning": tuning, "cache_dir": str(cache), "num_virtual_tokens": virtual_tokens},
                                "canaries": {"m": 0}, "train": {"batch_size": batch_size, "progress": False},
                                "privacy": {"max_grad_norm": 0.1}})
    return cfg, prepare(cfg, cache_root=cache, progress=False)


def median_ms(xs):
    return statistics.median(xs) * 1e3


def time_zo_vs_backprop(tuning: str, args) -> tuple[float, float]:
    from dp_audit.trainers.modeling import INPUT_KEYS, build_classifier, subset, trainable_parameters
    from dp_audit.trainers.zo import zo_step

    cfg, prep = setup(tuning, args.cache, args.batch_size, args.virtual_tokens)
    g = torch.Generator().manual_seed(0)
    plain = build_classifier(prep.backbone_dir, cfg.model, generator=g)
    opt = torch.optim.AdamW(trainable_parameters(plain), lr=1e-4)
    zo_model = build_classifier(prep.backbone_dir, cfg.model, generator=g)
    zo_params = trainable_parameters(zo_model)
    t_bp, t_zo = [], []
    for i in range(args.steps + 3):
        idx = torch.randperm(prep.n_train, generator=g)[: args.batch_size]
        batch = subset(prep.train, idx)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(plain(**{k: batch[k] for k in INPUT_KEYS}).logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        zo_step(zo_model, zo_params, batch, seed=i, scale=1e-3, lr=1e-4, clip=1.0, noise="gaussian", noise_scale=1.0,
                normaliser=float(args.batch_size), generator=g, chunk=args.batch_size)
        t2 = time.perf_counter()
        if i >= 3:
            t_bp.append(t1 - t0)
            t_zo.append(t2 - t1)
    return median_ms(t_zo), median_ms(t_bp)


def time_dpflat_vs_dpsgd(args) -> dict[str, float]:
    from dp_audit.trainers.dpflat_awp import AWP
    from dp_audit.trainers.dpflat_prefix import PrefixHook
    from dp_audit.trainers.dpsgd import _ce, make_private, plan
    from dp_audit.trainers.modeling import INPUT_KEYS, build_classifier

    cfg, prep = setup("prefix", args.cache, args.batch_size, args.virtual_tokens)
    setup_ = plan(cfg, prep.n_train)
    g = torch.Generator().manual_seed(0)
    wrapped = {}
    variants = {"dpsgd": None, f"paper, micro-batch {args.micro_batch}": ("paper", args.micro_batch),
                "paper, micro-batch = logical batch": ("paper", 10**9), "per-example": ("per-example", 10**9)}
    for name, awp_cfg in variants.items():
        model = build_classifier(prep.backbone_dir, cfg.model, generator=g)
        hook = PrefixHook(model)
        gsm, opt, loader = make_private(model, prep, cfg, setup_, generator=g)
        awp = None if awp_cfg is None else AWP(model=gsm, hook=hook, mode=awp_cfg[0], gamma=1e-4,
                                               active_steps=10**9, micro_batch=awp_cfg[1], generator=g)
        wrapped[name] = (gsm, opt, awp)
    loader_it = iter(loader)
    times = {k: [] for k in wrapped}
    for i in range(args.steps + 3):
        tensors = next(loader_it, None)
        if tensors is None:
            loader_it = iter(loader)
            tensors = next(loader_it)
        batch = dict(zip((*INPUT_KEYS, "labels"), tensors))
        if batch["labels"].numel() == 0:
            continue
        for name, (gsm, opt, awp) in wrapped.items():
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            if awp is not None:
                awp.before_step(0, batch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _ce(gsm, batch).backward()
            opt.step()
            if awp is not None:
                awp.after_step()
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    return {k: median_ms(v) for k, v in times.items()}


# ------------------------------------------------------------------ memory (one workload per process)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_probe(workload: str, tuning: str, args) -> None:
    from dp_audit.trainers.modeling import INPUT_KEYS, build_classifier, subset, trainable_parameters
    from dp_audit.trainers.zo import zo_step

    cfg, prep = setup(tuning, args.cache, args.batch_size, args.virtual_tokens)
    g = torch.Generator().manual_seed(0)
    model = build_classifier(prep.backbone_dir, cfg.model, generator=g)
    params = trainable_parameters(model)
    batch = subset(prep.train, slice(0, args.batch_size))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4) if workload == "backprop" else None
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter to the current RSS
    base = _rss_kb("VmRSS")
    for i in range(3):
        if workload == "inference":
            model.eval()
            with torch.inference_mode():
                model(**{k: batch[k] for k in INPUT_KEYS})
        elif workload == "zo":
            zo_step(model, params, batch, seed=i, scale=1e-3, lr=1e-4, clip=1.0, noise="gaussian", noise_scale=1.0,
                    normaliser=float(args.batch_size), generator=g, chunk=args.batch_size)
        else:
            model.train()
            loss = torch.nn.functional.cross_entropy(model(**{k: batch[k] for k in INPUT_KEYS}).logits, batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    peak = _rss_kb("VmHWM")
    print(json.dumps({"param_bytes": param_bytes, "increase_bytes": max(0, peak - base) * 1024,
                      "peak_rss_bytes": peak * 1024}))


def measure_memory(workload: str, tuning: str, args) -> dict:
    cmd = [sys.executable, __file__, "--memory-probe", workload, "--tuning", tuning, "--cache", str(args.cache),
           "--batch-size", str(args.batch_size), "--virtual-tokens", str(args.virtual_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    d = json.loads(out)
    d["memory"] = d["param_bytes"] + d["increase_bytes"]
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tuning", default="full,prefix,lora")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--virtual-tokens", type=int, default=20)
    ap.add_argument("--micro-batch", type=int, default=16, help="DP-Flat paper AWP: size of the first micro-batch")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.memory_probe:
        memory_probe(args.memory_probe, args.tuning, args)
        return

    print(f"torch threads {torch.get_num_threads()}; batch {args.batch_size}; {args.steps} timed steps each")
    for tuning in args.tuning.split(","):
        zo, bp = time_zo_vs_backprop(tuning, args)
        r = zo / bp
        print(f"[{tuning:>6}] DP-ZO step {zo:.1f} ms / non-private backprop step {bp:.1f} ms = {r:.2f} "
              f"(target < 1.0: {'met' if r < 1.0 else 'NOT met'})")
        mem = {w: measure_memory(w, tuning, args) for w in ("inference", "zo", "backprop")}
        rz = mem["zo"]["memory"] / mem["inference"]["memory"]
        rb = mem["backprop"]["memory"] / mem["inference"]["memory"]
        print(f"[{tuning:>6}] memory (params + peak RSS increase): inference {mem['inference']['memory'] / 2**20:.1f} MiB, "
              f"DP-ZO {mem['zo']['memory'] / 2**20:.1f} MiB, backprop {mem['backprop']['memory'] / 2**20:.1f} MiB; "
              f"DP-ZO / inference = {rz:.2f} (target < 1.3: {'met' if rz < 1.3 else 'NOT met'}), "
              f"backprop / inference = {rb:.2f}")
    t = time_dpflat_vs_dpsgd(args)
    for name in [k for k in t if k != "dpsgd"]:
        r = t[name] / t["dpsgd"]
        print(f"[prefix] DP-Flat step (AWP {name}) {t[name]:.1f} ms / DP-SGD step {t['dpsgd']:.1f} ms = {r:.2f} "
              f"(target < 1.5: {'met' if r < 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
