"""DP-SGD samples at exactly the accounted rate (issue 12 item 7).

The claim composes Poisson-subsampled Gaussians at q = B/n. Opacus' own loader
(``DPDataLoader.from_data_loader``) samples at 1/⌈n/B⌉ and divides by ⌊n/⌈n/B⌉⌋; for n = 300,
B = 64 that is q = 0.2 (mean batch 60) instead of 0.2133 (64). dp-audit builds the loader at q
and divides by qn = B, so the ledger's accounted rate, the observed rate and the sampler agree.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from scipy import stats

from dp_audit.config import run_config_from_dict
from dp_audit.trainers.dpsgd import ledger_for, make_private, observed_mechanism, plan
from tests.test_dpflat_mechanisms import tiny_batch
from tests.test_dpzo import tiny_full_model

N, B = 300, 64  # ⌈n/B⌉ = 5: Opacus' default rate would be 0.2, the accounted one 64/300


def _private(seed: int = 0):
    cfg = run_config_from_dict({"train": {"batch_size": B, "epochs": 1, "progress": False},
                                "privacy": {"epsilon": 3.0, "reproducible_noise": True}})
    setup = plan(cfg, N)
    batch = tiny_batch(n=N)
    batch["labels"] = torch.arange(N)  # the labels carry the example index (the sampler never reads them)
    gsm, optimizer, loader = make_private(tiny_full_model(), SimpleNamespace(train=batch), cfg, setup,
                                          generator=torch.Generator().manual_seed(seed))
    return setup, optimizer, loader


def test_ledger_rate_equals_the_observed_rate_and_b_over_n():
    """Plausible bugs: Opacus' 1/⌈n/B⌉ loader (observed 0.2 ≠ ledger 0.2133); the normaliser
    ⌊nq⌋ = 60 of Opacus' make_private instead of qn = 64."""
    setup, optimizer, loader = _private()
    ledger = ledger_for(setup, observed=observed_mechanism(optimizer, loader, steps=setup.steps))
    ev = ledger["events"][0]
    assert ev["sample_rate"] == ev["observed"]["sample_rate"] == B / N
    assert loader.sample_rate == B / N and optimizer.expected_batch_size == B
    assert ev["observed"]["expected_batch_size"] == B


def test_batch_sizes_and_inclusion_frequencies_match_q():
    """Over 800 Poisson batches the total number of sampled examples is Binomial(800·n, q):
    two-sided binomial test at q = B/n (p > 1e-4), while Opacus' rate 0.2 is rejected by the same
    test; and every example (the last ones included, where member canaries sit) is sampled with the
    same frequency: chi-square of the per-example counts against uniform. Plausible bugs: sampling
    at 1/⌈n/B⌉; fixed-size or sequential batches (uniform counts but no Poisson variance: the
    batch-size variance check); a sampler that favours low indices."""
    _, _, loader = _private(seed=1)
    counts = np.zeros(N, dtype=np.int64)
    sizes = []
    def forever():
        while True:
            yield from loader

    it = forever()
    for _ in range(800):
        labels = next(it)[-1]
        sizes.append(int(labels.numel()))
        counts[labels.numpy()] += 1
    total, trials = int(sum(sizes)), 800 * N
    q = B / N
    assert stats.binomtest(total, trials, q).pvalue > 1e-4, np.mean(sizes)
    assert stats.binomtest(total, trials, 1 / 5).pvalue < 1e-6  # the test can tell Opacus' rate apart
    # Poisson sampling: batch size ~ Binomial(n, q), variance nq(1-q) (fixed-size batches: 0)
    var = float(np.var(sizes, ddof=1))
    assert abs(var / (N * q * (1 - q)) - 1) < 0.2, var
    chi2 = stats.chisquare(counts)
    assert chi2.pvalue > 1e-4, chi2
    assert abs(counts[-20:].mean() / counts.mean() - 1) < 0.15  # the tail (canaries) is not starved
