"""Step-time ratios on the causal LM (issue 16), measured in one run, interleaved, after warm-up:

- DP-SGD step (Opacus hooks; GPT-2's Conv1D through Opacus' functorch fallback) / non-private step,
- DP-ZO step (two forward passes of the batch, MeZO seed trick) / backprop step (non-private),
- inference (one forward pass, inference mode) / non-private step, for scale.

Same batches (expected batch size B) for every kind of step, the tiny GPT-2 of
trainers/lm_backbone.py (or --hidden/--layers), full fine-tuning. Ratios of medians are printed,
never absolute times as pass/fail.

``--memory``: peak memory of DP-ZO steps / of inference (and of backprop steps / inference), each
kind in its own subprocess (Linux): after set-up (model and batches loaded, no step run), the
resident-set high-water mark is reset (``/proc/self/clear_refs`` = 5) and the peak above the
resident set at that moment is read from ``VmHWM`` after the steps (first step included:
activations, z regenerated per tensor, AdamW state and gradients for backprop). Use a model large enough for activations to dominate the
allocator's noise (e.g. --hidden 256 --layers 4).
Usage: python benchmarks/lm_step_cost.py [--steps 20] [--batch-size 64] [--hidden 128 --layers 4] [--memory]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tuning", default="full", choices=("full", "prefix", "lora"))
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    ap.add_argument("--memory", action="store_true", help="peak-memory ratios (subprocesses) instead of times")
    ap.add_argument("--phase", default="", help=argparse.SUPPRESS)  # internal: one kind of step, print its peak
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.memory:
        return memory_ratios(args)

    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import new_classifier, prepare
    from dp_audit.trainers.causal_lm import lm_loss, lm_nll_each
    from dp_audit.trainers.dpsgd import make_private, plan
    from dp_audit.trainers.modeling import model_inputs, subset, trainable_parameters
    from dp_audit.trainers.zo import zo_step

    cfg = run_config_from_dict({
        "trainer": "dpsgd", "data": {"task": "generation"},
        "model": {"kind": "causal-lm", "hidden_size": args.hidden, "num_layers": args.layers,
                  "intermediate_size": 2 * args.hidden, "tuning": args.tuning, "num_virtual_tokens": 10,
                  "cache_dir": str(args.cache)},
        "canaries": {"kind": "secret", "m": 0}, "train": {"batch_size": args.batch_size, "progress": False},
        "privacy": {"reproducible_noise": True}})
    prep = prepare(cfg, cache_root=args.cache, progress=False)
    g = torch.Generator().manual_seed(0)
    plain = new_classifier(prep, generator=g)
    opt = torch.optim.AdamW(trainable_parameters(plain), lr=1e-3)
    zo_model = new_classifier(prep, generator=g)
    private = new_classifier(prep, generator=g)
    gsm, dp_opt, _ = make_private(private, prep, cfg, plan(cfg, prep.n_train), generator=g)
    n = prep.n_train
    noise = torch.Generator().manual_seed(1)

    def batch(i: int):
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(i))[: args.batch_size]
        return subset(prep.train, idx)

    def step_plain(b):
        loss = lm_loss(plain, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_dp(b):
        loss = lm_loss(gsm, b)
        dp_opt.zero_grad(set_to_none=True)
        loss.backward()
        dp_opt.step()

    def step_zo(b):
        zo_step(zo_model, trainable_parameters(zo_model), b, seed=int(torch.randint(0, 2**31, (1,), generator=g)),
                scale=1e-3, lr=1e-4, clip=1.0, noise="gaussian", noise_scale=1.0, normaliser=float(args.batch_size),
                generator=noise, loss_fn=lm_nll_each)

    @torch.inference_mode()
    def step_infer(b):
        plain.eval()
        plain(**model_inputs(b))
        plain.train()

    kinds = {"nonprivate": step_plain, "dpsgd": step_dp, "dpzo": step_zo, "inference": step_infer}
    if args.phase:
        import gc

        fn, batches_ = kinds[args.phase], [batch(i) for i in range(args.steps)]
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark
        base = _status_bytes("VmRSS")  # model and data loaded, no step run yet
        for b in batches_:
            fn(b)
        print(f"PEAK {_status_bytes('VmHWM') - base}")
        return
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.warmup + args.steps):
        b = batch(i)
        for name, fn in kinds.items():
            t = time.perf_counter()
            fn(b)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tiny GPT-2 {args.layers} x {args.hidden}, tuning {args.tuning}, batch {args.batch_size}, "
          f"{args.steps} steps each, torch threads {torch.get_num_threads()}")
    print(f"DP-SGD step / non-private step : {med['dpsgd'] / med['nonprivate']:.2f}")
    print(f"DP-ZO step / backprop step     : {med['dpzo'] / med['nonprivate']:.2f}")
    print(f"inference / backprop step      : {med['inference'] / med['nonprivate']:.2f}")


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def memory_ratios(args) -> None:
    import subprocess
    import sys

    peaks = {}
    for phase in ("inference", "dpzo", "nonprivate"):
        cmd = [sys.executable, __file__, "--phase", phase, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--hidden", str(args.hidden), "--layers", str(args.layers), "--tuning",
               args.tuning, "--cache", str(args.cache)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peaks[phase] = int(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("PEAK")))
    print(f"tiny GPT-2 {args.layers} x {args.hidden}, tuning {args.tuning}, batch {args.batch_size}: peak above "
          f"the set-up resident set: inference {peaks['inference'] / 2**20:.1f} MiB, DP-ZO "
          f"{peaks['dpzo'] / 2**20:.1f} MiB, backprop {peaks['nonprivate'] / 2**20:.1f} MiB")
    print(f"DP-ZO peak memory / inference peak memory : {peaks['dpzo'] / max(peaks['inference'], 1):.2f}")
    print(f"backprop peak memory / inference          : {peaks['nonprivate'] / max(peaks['inference'], 1):.2f}")


if __name__ == "__main__":
    main()
