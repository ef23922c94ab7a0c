"""Constructions (a) and (b) of issue 17 on the real prefix-tuned transformer.

The model is the project's own: a BERT built from :func:`~dp_audit.trainers.backbone.bert_config`
with the tiny test configuration (hidden 32, 2 layers, 2 heads, intermediate 64; tests/conftest.py
TINY), weights from :func:`~dp_audit.trainers.backbone.init_weights_` with a seeded generator (no
pretraining, no download: DP must hold for every model, a random backbone included), prefix tuning
through :func:`~dp_audit.trainers.modeling.apply_tuning` (PEFT, no projection) and the head frozen
with the trainer's ``freeze_head``. The step is :class:`~dp_audit.stepaudit.opacus_step.OpacusStep`
(Opacus + the real AWP/PrefixHook), as on the synthetic model.

Data: random token sequences (the auditor's choice). The statistic is the projection of the release
on Δ = (noise-free release on d1) − (noise-free release on d0), computed by the auditor from the
construction alone before any trial (white-box: the auditor knows the state, both data sets and the
code; the step is deterministic but for its noise). With isotropic Gaussian noise of std s per
coordinate this projection is the likelihood-ratio test, and the step is exactly ‖Δ‖/s-GDP: the
construction records that "expected μ" next to the claim 1/σ.

- ``transformer-dpsgd``: DP-SGD (the gradient canary of Nasr et al. 2023 for a model whose
  coordinates the auditor does not control: the canary is an input whose raw gradient exceeds C, its
  clipped gradient is the shift, and the statistic projects on it). Expected μ = 1/σ exactly.
- ``transformer-awp-{paper,dpsat,per-example}``: the same step with DP-Flat's AWP. In paper mode v
  comes from the raw mean gradient of the micro-batch (the whole batch here), so adding the canary
  moves v and with it every other example's clipped gradient (evaluated at P + v). How far the
  clipped sum moves depends on the model's curvature and on γ: the construction measures it (no
  kink is planted: a smooth transformer at a random state).
"""

from __future__ import annotations

import torch

from dp_audit.errors import UsageError
from dp_audit.stepaudit.construction import Construction, gaussian_claim
from dp_audit.stepaudit.constructions import CONSTRUCTIONS, DEFAULT_DELTA, _positive, projection

TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
VOCAB = 200
MODEL_SEED = 0
DATA_SEED = 1
# backbone init std: BERT's 0.02 leaves the prefix gradients ~1e-5 and the model almost linear in
# the prefix; 0.3 (the auditor's choice of model) gives sharper attention. C = 1e-3 clips every
# example at that init (their raw gradients are larger), so the clipped sum is a sum of directions.
INIT_STD = 0.3


def tiny_prefix_model(*, virtual_tokens: int = 4, seed: int = MODEL_SEED, init_std: float = 0.02):
    """The tiny prefix-tuned BERT (no pretraining, seeded init, head frozen)."""
    from transformers import BertForSequenceClassification

    from dp_audit.config import DataConfig, ModelConfig
    from dp_audit.hf_compat import quiet_transformers
    from dp_audit.trainers.backbone import bert_config, init_weights_
    from dp_audit.trainers.dpflat import freeze_head
    from dp_audit.trainers.modeling import apply_tuning

    quiet_transformers()
    mc = ModelConfig(**TINY_MODEL, tuning="prefix", num_virtual_tokens=int(virtual_tokens))
    g = torch.Generator().manual_seed(int(seed))
    model = BertForSequenceClassification(bert_config(mc, DataConfig(), VOCAB))
    init_weights_(model, generator=g, std=float(init_std))
    model = apply_tuning(model, mc, generator=g)
    freeze_head(model)
    # float64: the updates of a random-init backbone (raw prefix gradients ~1e-5) are below float32's
    # resolution of a N(0, 1) prefix; rounding would then add a data-dependent error to the release
    return model.double()


def token_batch(n: int, seq_len: int, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """n random sequences in the trainers' batch format ([CLS]-like id 2 first; ids 5..VOCAB-1)."""
    ids = torch.randint(5, VOCAB, (n, seq_len), generator=generator)
    ids[:, 0] = 2
    return {"input_ids": ids, "attention_mask": torch.ones(n, seq_len, dtype=torch.long),
            "token_type_ids": torch.zeros(n, seq_len, dtype=torch.long),
            "position_ids": torch.arange(seq_len).unsqueeze(0).expand(n, -1).contiguous(),
            "labels": torch.randint(0, 2, (n,), generator=generator)}


def _cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def noise_free(runner, state, batch) -> torch.Tensor:
    """The step's release with the optimizer's noise multiplier set to 0 (float64)."""
    o = runner.optimizer
    sigma = o.noise_multiplier
    o.noise_multiplier = 0.0
    try:
        return runner.step(state, batch, torch.Generator().manual_seed(0)).double()
    finally:
        o.noise_multiplier = sigma


def _transformer(awp_mode: str | None, *, sigma: float, delta: float, batch_size: int, clip: float, gamma: float,
                 seq_len: int, virtual_tokens: int, init_std: float = INIT_STD) -> Construction:
    from dp_audit.stepaudit.opacus_step import OpacusStep
    from dp_audit.trainers.dpflat_prefix import prefix_weight

    sigma, clip = _positive("sigma", sigma), _positive("clip", clip)
    if batch_size < 2 or seq_len < 2 or virtual_tokens < 1:
        raise UsageError("transformer constructions need batch_size >= 2, seq_len >= 2, virtual_tokens >= 1")
    model = tiny_prefix_model(virtual_tokens=virtual_tokens, init_std=_positive("init_std", init_std))
    runner = OpacusStep(model, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch_size,
                        awp_mode=awp_mode, gamma=gamma if awp_mode else 0.0, micro_batch=batch_size)
    g = torch.Generator().manual_seed(DATA_SEED)
    canary = token_batch(1, seq_len, generator=g)
    others = token_batch(batch_size - 1, seq_len, generator=g)
    d0, d1 = others, _cat(canary, others)  # the canary first: in AWP's micro-batch (here the whole batch)
    p0 = prefix_weight(runner.gsm).detach().clone()  # the seeded initial prefix: the auditor's state
    prev = torch.randn(p0.shape, generator=g, dtype=p0.dtype) if awp_mode == "dpsat" else None  # a public previous release
    state = {"prefix": p0, "previous_release": prev}
    base0, base1 = noise_free(runner, state, d0), noise_free(runner, state, d1)
    delta_release = base1 - base0
    if not float(delta_release.norm()) > 0:
        raise UsageError("transformer construction: the canary does not move the release")
    s = runner.noise_scale()
    expected_mu = float(delta_release.norm()) / s
    name = "transformer-dpsgd" if awp_mode is None else f"transformer-awp-{awp_mode}"
    what = "DP-SGD" if awp_mode is None else f"DP-Flat AWP {awp_mode} (γ={gamma:g})"
    desc = (f"{what} step on the tiny prefix-tuned BERT (Opacus, q=1, σ={sigma:g}, C={clip:g}, B={batch_size}, "
            f"{virtual_tokens} virtual tokens): random-token canary, statistic on the noise-free shift")
    info = {"trainer": "dpsgd" if awp_mode is None else "dpflat", "awp_mode": awp_mode, "gamma": gamma if awp_mode
            else None, "model": {**TINY_MODEL, "vocab": VOCAB, "virtual_tokens": virtual_tokens, "seq_len": seq_len,
                                 "init": f"init_weights_ (seeded, std {init_std:g}), no pretraining", "dtype": "float64"},
            "sigma": sigma, "clip": clip, "batch_size_d1": batch_size, "sample_rate": 1.0,
            "release_dim": int(p0.numel()), "noise_std": s, "shift_norm": float(delta_release.norm()),
            "expected_mu": expected_mu, "expected_sensitivity": expected_mu * sigma * clip,
            "claimed_sensitivity": clip, "release": "update P_after - P_before (SGD, lr 1)",
            "statistic": "projection on the noise-free release difference (d1 - d0)"}
    return Construction(name=name, description=desc, step_fn=runner.step, state=state, d0=d0, d1=d1,
                        statistic=projection(delta_release), batched_step_fn=runner.batched, info=info,
                        **gaussian_claim(1.0 / sigma, delta))


@CONSTRUCTIONS.register("transformer-dpsgd")
def transformer_dpsgd(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8, clip: float = 1e-3,
                      seq_len: int = 12, virtual_tokens: int = 4, init_std: float = INIT_STD) -> Construction:
    """One DP-SGD step on the tiny prefix-tuned BERT with a gradient canary (μ = 1/σ)."""
    return _transformer(None, sigma=sigma, delta=delta, batch_size=batch_size, clip=clip, gamma=0.0, seq_len=seq_len,
                        virtual_tokens=virtual_tokens, init_std=init_std)


def _register(mode: str) -> None:
    def builder(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8, clip: float = 1e-3,
                gamma: float = 0.1, seq_len: int = 12, virtual_tokens: int = 4,
                init_std: float = INIT_STD) -> Construction:
        return _transformer(mode, sigma=sigma, delta=delta, batch_size=batch_size, clip=clip,
                            gamma=_positive("gamma", gamma), seq_len=seq_len, virtual_tokens=virtual_tokens,
                            init_std=init_std)

    builder.__name__ = f"transformer_awp_{mode.replace('-', '_')}"
    builder.__doc__ = f"One DP-Flat step with AWP {mode!r} on the tiny prefix-tuned BERT (shift measured)."
    CONSTRUCTIONS.register(f"transformer-awp-{mode}")(builder)


for _mode in ("paper", "dpsat", "per-example"):
    _register(_mode)


__all__ = ["noise_free", "tiny_prefix_model", "token_batch", "transformer_dpsgd"]
