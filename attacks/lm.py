"""Reference-free attacks on causal language models (DESIGN.md §5).

- ``zlib`` (Carlini et al. 2021, "Extracting Training Data from Large Language Models", USENIX
  Security, §5.2): the ratio of the log-perplexity (mean token NLL, ``loss``) to the zlib entropy
  (compressed length in bytes) of the text; a low ratio flags memorisation: score = −loss/zlib.
- ``mink`` (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models", ICLR): the
  mean of the k% lowest token log-probabilities (at least one token).
- ``minkpp`` (Zhang et al. 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data
  from Large Language Models", arXiv 2404.02936): each token's log-probability standardised by the
  mean μ and standard deviation σ of log p(z) for z drawn from the model's next-token
  distribution at that position, (log p(x_t) − μ_t)/σ_t, then the mean of the k% lowest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dp_audit.attacks.base import ATTACKS, Attack
from dp_audit.attacks.signals import Signals
from dp_audit.errors import UsageError


def mean_of_lowest(values: np.ndarray, mask: np.ndarray, *, k: float) -> np.ndarray:
    """Per row: the mean of the ``max(1, floor(k·L_i))`` smallest masked values (L_i = tokens in row i)."""
    if not 0.0 < k <= 1.0:
        raise UsageError(f"k must be in (0, 1], got {k}")
    counts = mask.sum(axis=1)
    if np.any(counts == 0):
        raise UsageError(f"{int(np.sum(counts == 0))} example(s) have no scored tokens")
    v = np.where(mask, values.astype(np.float64), np.inf)
    v.sort(axis=1)
    take = np.maximum(1, np.floor(k * counts).astype(int))
    csum = np.cumsum(np.where(np.isfinite(v), v, 0.0), axis=1)
    return csum[np.arange(v.shape[0]), take - 1] / take


@ATTACKS.register("zlib")
@dataclass(kw_only=True, eq=False)
class ZlibAttack(Attack):
    name = "zlib"
    needs_reference = 0
    kinds = ("causal-lm",)
    requires = ("loss", "text_bytes_zlib")

    def _score(self, target: Signals) -> np.ndarray:
        return -target.loss / np.maximum(target.text_bytes_zlib, 1)


@ATTACKS.register("mink")
@dataclass(kw_only=True, eq=False)
class MinKAttack(Attack):
    name = "mink"
    needs_reference = 0
    kinds = ("causal-lm",)
    requires = ("token_logprobs", "token_mask")
    k: float = 0.2

    def _score(self, target: Signals) -> np.ndarray:
        return mean_of_lowest(target.token_logprobs, target.token_mask, k=self.k)


@ATTACKS.register("minkpp")
@dataclass(kw_only=True, eq=False)
class MinKPlusPlusAttack(Attack):
    name = "minkpp"
    needs_reference = 0
    kinds = ("causal-lm",)
    requires = ("token_logprobs", "token_mask", "token_mu", "token_sigma")
    k: float = 0.2
    min_sigma: float = 1e-6

    def _score(self, target: Signals) -> np.ndarray:
        z = (target.token_logprobs.astype(np.float64) - target.token_mu) / np.maximum(target.token_sigma, self.min_sigma)
        return mean_of_lowest(z, target.token_mask, k=self.k)
