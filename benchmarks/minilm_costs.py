"""Issue 14's cost ratios on MiniLM (English task, max_length 24, expected batch 64), each
measured in one run: every variant steps on the same batch, interleaved, after warm-up; the
ratio of medians is printed (the machine is shared: ratios, not milliseconds, are what count).

--part dpsgd   DP-SGD step / non-private step. Full fine-tuning with Opacus hooks, ghost
               clipping (Opacus 1.6 fast gradient clipping), functorch (vmap), each with the
               word embeddings trainable and frozen (``model.freeze_embeddings``; the
               non-private baseline is given for both), book-keeping (``bk``,
               trainers/dpsgd_bk.py), and prefix tuning (hooks, bk). Goal <= 1.3.
--part zo      DP-ZO step / non-private backprop step (goal <= 0.7) for full / prefix / LoRA,
               and DP-ZO peak memory / inference peak memory (goal <= 1.1): each workload in a
               fresh process; "memory" = bytes of the model's parameters + the increase of the
               peak RSS (VmHWM, reset through /proc/self/clear_refs after loading and after every
               weight page was written once) during 3 steps.
--part dpflat  DP-Flat step / DP-SGD step, prefix tuning: paper AWP with the published
               micro-batch (20/1020 of the batch, >= 1 example), paper AWP with a quarter of the
               batch, per-example AWP. Goal <= 1.2 with the published micro-batch.

Usage: OMP_NUM_THREADS=1 python benchmarks/minilm_costs.py --part dpsgd [--steps 10]
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


def config(args, *, tuning: str, trainer: str = "dpsgd", mode: str | None = None, freeze: bool = False):
    from dp_audit.config import run_config_from_dict

    return run_config_from_dict({
        "trainer": trainer,
        "model": {"backbone": "minilm", "tuning": tuning, "cache_dir": str(args.cache),
                  "num_virtual_tokens": args.virtual_tokens, "freeze_embeddings": freeze},
        "data": {"task": "english", "max_length": args.max_length, "n_train": 640, "n_dev": 10, "n_test": 10},
        "canaries": {"m": 0}, "train": {"batch_size": args.batch_size, "progress": False},
        # only DP-SGD forms per-sample gradients; the other trainers refuse a mode other than 'auto'
        "privacy": {"grad_sample_mode": mode or ("hooks" if trainer == "dpsgd" else "auto"), "max_grad_norm": 0.1}})


def prepared(cfg, args):
    from dp_audit.trainers.base import prepare

    return prepare(cfg, cache_root=args.cache, progress=False)


def median_ms(xs) -> float:
    return statistics.median(xs) * 1e3


def interleave(steps: dict, batches, *, warmup: int) -> dict[str, float]:
    """Median ms per named step function, all run on each batch in turn (order rotated)."""
    times = {k: [] for k in steps}
    names = list(steps)
    for i, batch in enumerate(batches):
        order = names[i % len(names):] + names[:i % len(names)]  # no variant always first (cache, load)
        for name in order:
            t0 = time.perf_counter()
            steps[name](batch)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
        gc.collect()
    return {k: median_ms(v) for k, v in times.items()}


def poisson_batches(loader, n: int):
    from dp_audit.trainers.modeling import INPUT_KEYS

    it = iter(loader)
    out = 0
    while out < n:
        tensors = next(it, None)
        if tensors is None:
            it = iter(loader)
            continue
        batch = dict(zip(getattr(loader, "batch_keys", (*INPUT_KEYS, "labels")), tensors))
        if batch["labels"].numel():
            out += 1
            yield batch


def plain_step(model):
    from dp_audit.trainers.modeling import model_inputs, trainable_parameters

    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-5)

    def step(batch):
        loss = torch.nn.functional.cross_entropy(model(**model_inputs(batch)).logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def dp_step(gsm, opt, awp=None):
    """One DP-SGD step; with ``awp`` (trainers.dpflat_awp.AWP) DP-Flat's: v applied before the
    gradient, removed after the optimizer step."""
    from dp_audit.trainers.dpsgd import _ce

    def step(batch):
        opt.zero_grad(set_to_none=True)
        if awp is not None:
            awp.before_step(0, batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ce(gsm, batch).backward()
        opt.step()
        if awp is not None:
            awp.after_step()
        opt.zero_grad(set_to_none=True)  # frees the per-sample gradients before the next variant

    return step


# ------------------------------------------------------------------ DP-SGD


def part_dpsgd(args) -> None:
    from dp_audit.trainers.dpsgd import make_private, plan
    from dp_audit.trainers.modeling import build_classifier

    g = torch.Generator().manual_seed(0)
    steps, loader = {}, None
    for tuning in args.tuning.split(","):
        freezes = (False, True) if tuning == "full" else (False,)
        for freeze in freezes:
            modes = (args.prefix_modes if tuning != "full" else args.modes if freeze
                     else args.unfrozen_modes or args.modes).split(",")
            cfg = config(args, tuning=tuning, freeze=freeze)
            prep = prepared(cfg, args)
            tag = f"{tuning}{' frozen-emb' if freeze else ''}"
            steps[f"{tag} | non-private"] = plain_step(build_classifier(prep.backbone_dir, cfg.model, generator=g))
            for mode in modes:
                # functorch is Opacus' vmap mode: not a config choice, passed to make_private directly
                cfg_m = config(args, tuning=tuning, freeze=freeze, mode="hooks" if mode == "functorch" else mode)
                model = build_classifier(prep.backbone_dir, cfg_m.model, generator=g)
                gsm, opt, ld = make_private(model, prep, cfg_m, plan(cfg_m, prep.n_train), generator=g, mode=mode)
                steps[f"{tag} | DP-SGD {mode}"] = dp_step(gsm, opt)
                loader = loader or ld
    print(f"torch threads {torch.get_num_threads()}; expected batch {args.batch_size}; max_length {args.max_length}; "
          f"{args.steps} timed steps after {args.warmup} warm-up, all variants on each Poisson batch", flush=True)
    t = interleave(steps, poisson_batches(loader, args.steps + args.warmup), warmup=args.warmup)
    for name, ms in t.items():
        tag, what = name.split(" | ")
        base = t[f"{tag} | non-private"]
        extra = ""
        if tag == "full frozen-emb" and "full | non-private" in t and what != "non-private":
            extra = f"; / full non-private (embeddings trained) {ms / t['full | non-private']:.2f}"
        print(f"{name:>34}: {ms:9.1f} ms  ratio to {tag} non-private {ms / base:.2f}"
              f"{'  (goal <= 1.3: ' + ('met' if ms / base <= 1.3 else 'NOT met') + ')' if what != 'non-private' else ''}"
              f"{extra}", flush=True)


# ------------------------------------------------------------------ DP-ZO


def zo_step_fn(model, params, args, g):
    from dp_audit.trainers.zo import zo_step

    counter = iter(range(10**9))

    def step(batch):
        zo_step(model, params, batch, seed=next(counter), scale=1e-3, lr=1e-6, clip=1.0, noise="gaussian",
                noise_scale=1.0, normaliser=float(args.batch_size), generator=g, chunk=args.batch_size)

    return step


def fixed_batches(prep, args, g):
    from dp_audit.trainers.modeling import subset

    for _ in range(args.steps + args.warmup):
        yield subset(prep.train, torch.randperm(prep.n_train, generator=g)[: args.batch_size])


def part_zo(args) -> None:
    print(f"torch threads {torch.get_num_threads()}; batch {args.batch_size}; max_length {args.max_length}; "
          f"{args.steps} timed steps after {args.warmup} warm-up", flush=True)
    for tuning in args.tuning.split(","):
        if not args.no_time:
            zo_time(tuning, args)
        mem = {w: measure_memory(w, tuning, args) for w in ("inference", "zo", "backprop")}
        rz = mem["zo"]["memory"] / mem["inference"]["memory"]
        rb = mem["backprop"]["memory"] / mem["inference"]["memory"]
        mib = {k: v["memory"] / 2**20 for k, v in mem.items()}
        print(f"[{tuning:>6}] memory (params + peak RSS increase): inference {mib['inference']:.1f} MiB, DP-ZO "
              f"{mib['zo']:.1f} MiB, backprop {mib['backprop']:.1f} MiB; DP-ZO / inference = {rz:.2f} (goal <= 1.1: "
              f"{'met' if rz <= 1.1 else 'NOT met'}), backprop / inference = {rb:.2f}", flush=True)


def zo_time(tuning: str, args) -> None:
    from dp_audit.trainers.modeling import build_classifier, trainable_parameters

    g = torch.Generator().manual_seed(0)
    cfg = config(args, tuning=tuning, trainer="dpzo")
    prep = prepared(cfg, args)
    zo_model = build_classifier(prep.backbone_dir, cfg.model, generator=g)
    steps = {"backprop": plain_step(build_classifier(prep.backbone_dir, cfg.model, generator=g)),
             "DP-ZO": zo_step_fn(zo_model, trainable_parameters(zo_model), args, g)}
    t = interleave(steps, fixed_batches(prep, args, g), warmup=args.warmup)
    r = t["DP-ZO"] / t["backprop"]
    print(f"[{tuning:>6}] DP-ZO step {t['DP-ZO']:.1f} ms / non-private backprop step {t['backprop']:.1f} ms = "
          f"{r:.2f} (goal <= 0.7: {'met' if r <= 0.7 else 'NOT met'})", flush=True)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_probe(workload: str, tuning: str, args) -> None:
    from dp_audit.trainers.modeling import build_classifier, model_inputs, subset, trainable_parameters

    g = torch.Generator().manual_seed(0)
    cfg = config(args, tuning=tuning, trainer="dpzo")
    prep = prepared(cfg, args)
    model = build_classifier(prep.backbone_dir, cfg.model, generator=g)
    params = trainable_parameters(model)
    batch = subset(prep.train, slice(0, args.batch_size))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5) if workload == "backprop" else None
    step = zo_step_fn(model, params, args, g) if workload == "zo" else None
    with torch.no_grad():  # the weights may be a copy-on-write mmap of the safetensors file: make them
        for p in model.parameters():  # private, resident pages now, or the first in-place update (DP-ZO,
            p.mul_(1.0)  # the optimiser) would count the model a second time as "workload" memory
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS counter restarts at the current RSS
    base = _status_kb("VmRSS")
    for _ in range(3):
        if workload == "inference":
            model.eval()
            with torch.inference_mode():
                model(**model_inputs(batch))
        elif workload == "zo":
            step(batch)
        else:
            model.train()
            loss = torch.nn.functional.cross_entropy(model(**model_inputs(batch)).logits, batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    peak = _status_kb("VmHWM")
    print(json.dumps({"param_bytes": param_bytes, "increase_bytes": max(0, peak - base) * 1024}))


def measure_memory(workload: str, tuning: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", workload, "--tuning", tuning, "--cache", str(args.cache),
           "--batch-size", str(args.batch_size), "--virtual-tokens", str(args.virtual_tokens),
           "--max-length", str(args.max_length)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    d = json.loads(out)
    d["memory"] = d["param_bytes"] + d["increase_bytes"]
    return d


# ------------------------------------------------------------------ DP-Flat


def part_dpflat(args) -> None:
    from dp_audit.trainers.dpflat_awp import AWP
    from dp_audit.trainers.dpflat_prefix import PrefixHook
    from dp_audit.trainers.dpsgd import make_private, plan
    from dp_audit.trainers.modeling import build_classifier

    cfg = config(args, tuning="prefix", trainer="dpflat")
    prep = prepared(cfg, args)
    published = max(1, round(cfg.dpflat.awp_micro_batch_fraction * args.batch_size))
    variants = {"DP-SGD": None, f"paper AWP, micro-batch {published} (published 20/1020)": ("paper", published),
                f"paper AWP, micro-batch {args.batch_size // 4} (B/4)": ("paper", args.batch_size // 4),
                "per-example AWP": ("per-example", 10**9)}
    g = torch.Generator().manual_seed(0)
    steps, loader = {}, None
    for name, awp_cfg in variants.items():
        model = build_classifier(prep.backbone_dir, cfg.model, generator=g)
        hook = PrefixHook(model)
        gsm, opt, ld = make_private(model, prep, cfg, plan(cfg, prep.n_train), generator=g)
        loader = loader or ld
        awp = None if awp_cfg is None else AWP(model=gsm, hook=hook, mode=awp_cfg[0], gamma=1e-4,
                                               active_steps=10**9, micro_batch=awp_cfg[1], generator=g)
        steps[name] = dp_step(gsm, opt, awp)
    print(f"torch threads {torch.get_num_threads()}; prefix ({args.virtual_tokens} virtual tokens); expected batch "
          f"{args.batch_size}; {args.steps} timed steps after {args.warmup} warm-up", flush=True)
    t = interleave(steps, poisson_batches(loader, args.steps + args.warmup), warmup=args.warmup)
    for name in [k for k in t if k != "DP-SGD"]:
        r = t[name] / t["DP-SGD"]
        goal = f" (goal <= 1.2: {'met' if r <= 1.2 else 'NOT met'})" if "published" in name else ""
        print(f"[prefix] DP-Flat step ({name}) {t[name]:.1f} ms / DP-SGD step {t['DP-SGD']:.1f} ms = {r:.2f}{goal}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="dpsgd", choices=("dpsgd", "zo", "dpflat"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tuning", default=None, help="dpsgd: full,prefix; zo: full,prefix,lora")
    ap.add_argument("--modes", default="hooks,ghost,functorch,bk",
                    help="dpsgd, full fine-tuning: Opacus modes (hooks, ghost, functorch) and bk (trainers/dpsgd_bk.py)")
    ap.add_argument("--unfrozen-modes", default="", help="dpsgd: modes with the word embeddings trained (default --modes)")
    ap.add_argument("--prefix-modes", default="hooks,bk", help="dpsgd: modes for prefix tuning")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=24)
    ap.add_argument("--virtual-tokens", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    ap.add_argument("--no-time", action="store_true", help="zo: memory only")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.memory_probe:
        memory_probe(args.memory_probe, args.tuning, args)
        return
    args.tuning = args.tuning or {"dpsgd": "full,prefix", "zo": "full,prefix,lora", "dpflat": "prefix"}[args.part]
    {"dpsgd": part_dpsgd, "zo": part_zo, "dpflat": part_dpflat}[args.part](args)


if __name__ == "__main__":
    main()
