"""Time of one DP-SGD step divided by one non-private step on the demo model (issue 3).

Both are measured in the same run, interleaved, on the same batches (expected batch size B,
full fine-tuning and prefix tuning), after warm-up; the ratio of medians is printed.
Target: at most 2.0. Usage: python benchmarks/dp_overhead.py [--steps 30] [--tuning full]
MiniLM (issue 14): --backbone minilm --task english --max-length 24 --tuning prefix,head
(head: the frozen encoder's outputs cached, trainers/feature_cache.py; warm-up fills the cache).
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
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--tuning", default="full,prefix")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--grad-sample-mode", default="auto", help="Opacus per-sample mode: auto | hooks | ghost")
    ap.add_argument("--backbone", default="tiny", choices=("tiny", "minilm"))
    ap.add_argument("--task", default="pseudo", choices=("pseudo", "english"))
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--virtual-tokens", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import prepare
    from dp_audit.trainers.dpsgd import make_private, plan
    from dp_audit.trainers.modeling import INPUT_KEYS, build_classifier, subset, trainable_parameters

    print(f"torch threads: {torch.get_num_threads()}; expected batch size {args.batch_size}; {args.steps} steps each")
    for tuning in args.tuning.split(","):
        cfg = run_config_from_dict({"trainer": "dpsgd", "model": {"tuning": tuning, "cache_dir": str(args.cache),
                                                                  "backbone": args.backbone,
                                                                  "num_virtual_tokens": args.virtual_tokens},
                                    "data": {"task": args.task, "max_length": args.max_length,
                                             # MiniLM: a small split (the head's feature cache fills in warm-up)
                                             **({"n_train": 640, "n_dev": 10, "n_test": 10}
                                                if args.backbone == "minilm" else {})},
                                    "canaries": {"m": 0}, "train": {"batch_size": args.batch_size, "progress": False},
                                    "privacy": {"grad_sample_mode": args.grad_sample_mode}})
        prep = prepare(cfg, cache_root=args.cache, progress=False)
        g = torch.Generator().manual_seed(0)
        plain = build_classifier(prep.backbone_dir, cfg.model, generator=g)
        opt = torch.optim.AdamW(trainable_parameters(plain), lr=1e-3)
        private = build_classifier(prep.backbone_dir, cfg.model, generator=g)
        gsm, dp_opt, loader = make_private(private, prep, cfg, plan(cfg, prep.n_train), generator=g)
        if tuning == "head":  # fill the frozen encoder's feature cache first: steps then measure the head alone
            from dp_audit.trainers.modeling import predict_losses

            predict_losses(plain, prep.train)
        loader_it = iter(loader)

        def step_plain(batch):
            loss = torch.nn.functional.cross_entropy(plain(**{k: batch[k] for k in INPUT_KEYS}).logits, batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        from dp_audit.trainers.dpsgd import _ce, grad_sample_mode

        def step_dp(batch):
            loss = _ce(gsm, batch)
            dp_opt.zero_grad(set_to_none=True)
            loss.backward()
            dp_opt.step()

        t_plain, t_dp = [], []
        for i in range(args.steps + args.warmup):
            nonlocal_batch = next(loader_it, None)
            if nonlocal_batch is None:
                loader_it = iter(loader)
                nonlocal_batch = next(loader_it)
            batch = dict(zip((*INPUT_KEYS, "labels"), nonlocal_batch))
            if batch["labels"].numel() == 0:
                continue
            same = subset(batch, slice(None))  # the same examples for the non-private step
            t0 = time.perf_counter(); step_dp(batch); t1 = time.perf_counter()
            step_plain(same); t2 = time.perf_counter()
            if i >= args.warmup:  # warm-up
                t_dp.append(t1 - t0)
                t_plain.append(t2 - t1)
        r = statistics.median(t_dp) / statistics.median(t_plain)
        print(f"{tuning:>7} ({grad_sample_mode(cfg)}): DP-SGD step {statistics.median(t_dp) * 1e3:.1f} ms / non-private step "
              f"{statistics.median(t_plain) * 1e3:.1f} ms = ratio {r:.2f}  (target <= 2.0: {'met' if r <= 2.0 else 'NOT met'})")


if __name__ == "__main__":
    main()
