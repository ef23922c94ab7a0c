"""Cost of a loss-landscape curve relative to one evaluation epoch (issue 7).

Model: a tiny random-init BERT classifier (hidden 64, 2 layers, 2 heads; full model probed, or
the prefix of a PEFT prefix-tuned copy with --tuning prefix) on 512 synthetic examples (random
token ids, lengths 16-64, batch 64). Measured in one run, after a warm-up, median of --repeats:

    ratio = time(loss_curve with K = 8 Gaussian directions × 11 η values) / time(one evaluation epoch)

Target: at most 3. A naive curve evaluates every example at K·|η| = 88 points (88 epochs; 81
when η = 0 is shared). The default probe (``budget=2.5``) evaluates w once on every example and
each (direction, η ≠ 0) point on a fresh random subsample of m = ⌊1.5·n/80 − 8⌋ examples per
direction (8 = the per-call overhead in example-equivalents; m = 1 here), with per-example control
variates; its standard errors include the subsampling (see landscapes/surface.py). ``--full``
also times the full evaluation (``budget=None``) for reference.

Usage: python benchmarks/landscape_cost.py [--repeats 3] [--tuning full|prefix] [--full]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

N, VOCAB, BATCH = 512, 1000, 64


def build(tuning: str, generator: torch.Generator):
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.hf_compat import quiet_transformers

    quiet_transformers()
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128, num_labels=2)
    with torch.random.fork_rng():  # HF initialises from the global RNG; overwritten below
        model = BertForSequenceClassification(cfg)
        if tuning == "prefix":
            from peft import PrefixTuningConfig, get_peft_model

            from dp_audit.hf_compat import enable_prefix_tuning

            model = get_peft_model(enable_prefix_tuning(model),
                                   PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=10))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.05, generator=generator)
    return model


def data(generator: torch.Generator):
    out = []
    for s in range(0, N, BATCH):
        lens = torch.randint(16, 65, (BATCH,), generator=generator)
        width = int(lens.max())
        ids = torch.randint(1, VOCAB, (BATCH, width), generator=generator)
        mask = (torch.arange(width)[None, :] < lens[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (BATCH,), generator=generator)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tuning", choices=("full", "prefix"), default="full")
    ap.add_argument("--full", action="store_true", help="also time the full evaluation (budget=None)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from dp_audit.landscapes.evaluation import ClassifierEvaluator
    from dp_audit.landscapes.params import select_parameters
    from dp_audit.landscapes.surface import DEFAULT_ETAS, loss_curve

    g = torch.Generator().manual_seed(0)
    model = build(args.tuning, g)
    ev = ClassifierEvaluator(data(g), batch_size=BATCH)
    params = select_parameters(model)
    k, etas = 8, DEFAULT_ETAS

    def epoch():
        ev(model)

    def probe(budget):
        return loss_curve(model, ev, params, etas=etas, n_directions=k, generator=torch.Generator().manual_seed(1),
                          budget=budget, progress=False)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    epoch()
    probe(2.5)  # warm-up
    t_epoch, t_probe, t_full = [], [], []
    for _ in range(args.repeats):
        t_epoch.append(timed(epoch))
        t_probe.append(timed(lambda: probe(2.5)))
        if args.full:
            t_full.append(timed(lambda: probe(None)))
        t_epoch.append(timed(epoch))
    curve = probe(2.5)
    e, p = statistics.median(t_epoch), statistics.median(t_probe)
    print(f"torch threads {torch.get_num_threads()}; tuning {args.tuning}; n = {N}; K = {k}; |eta| = {len(etas)}; "
          f"{sum(int(x.numel()) for _, x in params)} probed weights")
    print(f"one evaluation epoch: {e * 1e3:.1f} ms (median of {len(t_epoch)})")
    print(f"curve, budget 2.5 (m = {curve.examples_per_point} examples per point): {p * 1e3:.1f} ms")
    print(f"ratio probe / epoch: {p / e:.2f}  (target <= 3: {'met' if p / e <= 3 else 'NOT met'})")
    i = curve.eta.index(1.0)
    print(f"at eta = 1: loss {curve.loss_mean[i]:.4f} +- {curve.loss_se[i]:.4f} (SE incl. subsampling); "
          f"at eta = 0: {curve.loss_mean[curve.eta.index(0.0)]:.4f}")
    if args.full:
        f = statistics.median(t_full)
        full = probe(None)
        print(f"full evaluation (budget=None): {f * 1e3:.1f} ms, ratio {f / e:.1f} "
              f"(naive K*|eta| = {k * len(etas)} epochs; eta = 0 shared: {k * (len(etas) - 1) + 1})")
        print(f"full at eta = 1: loss {full.loss_mean[i]:.4f} +- {full.loss_se[i]:.4f}")


if __name__ == "__main__":
    main()
