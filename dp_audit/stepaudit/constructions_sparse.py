"""Construction (d) of issue 17: DP-Flat's cross-layer flattening (sparse prefix selection).

The smallest honest version: the trainer's real greedy selection (``select_layers`` of
trains/dpflat_sparse.py: the sharpness probe L(P⊙m_R + α·d), α ∈ [0, 1], greedy removal of the
flattest layer) runs inside every step on the synthetic :class:`~dp_audit.stepaudit.toy.ToyPrefixModel`
given a two-layer prefix layout (columns [0, 2h) are layer 0's key and value, [2h, 4h) layer 1's);
then one DP-SGD step through Opacus with the chosen layer mask, wired by the trainer's
``attach_components`` (mask in Opacus' step hook after the noise: removed columns get neither data
nor noise; the prefix is zeroed there before the step, as the trainer zeroes it before training).

- ``dpflat-sparse-paper``: paper mode probes the **private** dev split without privacy. D's dev
  split has two linear examples, one on each layer's columns, with the steeper one on layer 0:
  removing layer 0 leaves the flatter curve, so layer 0 is removed. D' adds a canary to the dev
  split, linear on layer 1's columns: now layer 1's curve is steeper and layer 1 is removed. The
  released update is exactly zero on the removed layer's columns (no noise there), so the
  statistic ‖r_layer0‖² − ‖r_layer1‖² separates the worlds perfectly: the step is not DP at any ε.
- ``dpflat-sparse-public``: public mode probes a public split (the same in both worlds); the canary
  is then placed where it can act, in the training batch (a gradient canary on a kept column): the
  two worlds differ by its clipped term only (C). A control, with the statistic of (a).

The selection prefix P_sel that the probe starts from is part of the auditor's state (here 0 on
every column): in paper mode the trainer DP-trains it on the private train split, which is the same
in both worlds here (the canary is in the dev split). Conditioning on one P_sel is what the
construction shows; the flip holds for any P_sel near 0 (the probe examples are linear).
"""

from __future__ import annotations

import torch

from dp_audit.errors import UsageError
from dp_audit.stepaudit.construction import Construction, gaussian_claim
from dp_audit.stepaudit.constructions import CANARY_SCALE, CONSTRUCTIONS, DEFAULT_DELTA, _positive, _unit, projection

HIDDEN = 2  # h: layer l's key and value columns are [2lh, (2l+2)h); width 4h = 8
LAYERS = 2
PROBE_A, PROBE_B, PROBE_CANARY = 2.0, 1.0, 3.0  # ‖a‖ of the dev examples on layer 0, layer 1, and the canary
PUBLIC_FILL = 6  # public examples before the probe part: 8 in all, so public_splits' probe is the last 2


def layout():
    from dp_audit.trainers.dpflat_prefix import PrefixLayout

    return PrefixLayout(num_virtual_tokens=1, num_layers=LAYERS, hidden=HIDDEN)


def _on(cols: slice, scale: float, width: int) -> tuple[float, ...]:
    v = torch.zeros(width)
    v[cols] = 1.0
    return tuple((scale * v / v.norm()).tolist())


def layer_energy_statistic(lay) -> callable:
    """‖r on layer 0's columns‖² − ‖r on layer 1's columns‖² (float64)."""
    s0, s1 = lay.layer_slice(0), lay.layer_slice(1)

    def statistic(releases: torch.Tensor) -> torch.Tensor:
        r = releases.double()
        return (r[:, s0] ** 2).sum(1) - (r[:, s1] ** 2).sum(1)

    return statistic


def _sparse(mode: str, *, sigma: float, delta: float, batch_size: int, clip: float) -> Construction:
    from dp_audit.stepaudit.opacus_step import OpacusStep
    from dp_audit.stepaudit.toy import ToyExample, ToyPrefixModel, toy_batch
    from dp_audit.trainers.dpflat import Splits, probe_data
    from dp_audit.trainers.dpflat_sparse import select_layers

    sigma, clip = _positive("sigma", sigma), _positive("clip", clip)
    if batch_size < 2:
        raise UsageError("dpflat-sparse constructions need batch_size >= 2")
    lay = layout()
    width = lay.width
    l0, l1 = lay.layer_slice(0), lay.layer_slice(1)
    g = torch.Generator().manual_seed(0)  # the training batch is part of the construction: fixed
    c0 = l1.start  # the public-mode canary's own coordinate, on layer 1 (kept: the public probe removes layer 0)
    train = []
    for _ in range(batch_size - 1):
        a = torch.randn(width, generator=g) * 2
        a[c0] = 0.0
        train.append(ToyExample(label=int(torch.randint(0, 2, (1,), generator=g)), linear=tuple(a.tolist())))
    dev = [ToyExample(label=0, linear=_on(l0, PROBE_A, width)), ToyExample(label=0, linear=_on(l1, PROBE_B, width))]
    canary_dev = ToyExample(label=0, linear=_on(l1, PROBE_CANARY, width))
    canary_train = ToyExample(label=0, linear=tuple((CANARY_SCALE * _unit(width, c0)).tolist()))
    # the public split: PUBLIC_FILL examples (the public selection prefix's training part, unused
    # here: P_sel is the auditor's state) then copies of the two dev examples, which the trainer's
    # public_splits cut makes the held-out probe part (its last max(1, n // 4) = 2 examples)
    fill = [ToyExample(label=i % 2) for i in range(PUBLIC_FILL)]
    examples = [*train, *dev, canary_dev, canary_train, *fill, *dev]
    n_train = len(train)
    i_dev = [n_train, n_train + 1]
    i_cdev, i_ctrain = n_train + 2, n_train + 3
    i_public = list(range(n_train + 4, len(examples)))
    model = ToyPrefixModel(examples, tokens=1, width=width)
    selector = ToyPrefixModel(examples, tokens=1, width=width)  # selection runs before make_private: own copy
    runner = OpacusStep(model, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch_size - 1
                        if mode == "paper" else batch_size, layer_mask=True)
    p_sel = torch.zeros(1, width)
    train_ids = list(range(n_train))
    public = toy_batch(model, i_public)  # the same in both worlds
    if mode == "paper":
        # the batch is the same in both worlds; the private dev split differs in the canary
        d0 = Splits(train=toy_batch(model, train_ids), dev=toy_batch(model, i_dev), public=public)
        d1 = Splits(train=toy_batch(model, train_ids), dev=toy_batch(model, [*i_dev, i_cdev]), public=public)
    else:
        # the probe reads the public split (the trainer's choice for public mode); the canary is in the batch
        dev = toy_batch(model, i_dev)
        d0 = Splits(train=toy_batch(model, train_ids), dev=dev, public=public)
        d1 = Splits(train=toy_batch(model, [i_ctrain, *train_ids]), dev=dev, public=public)

    def mask_of(side) -> torch.Tensor:
        with torch.no_grad():
            selector.prefix.copy_(p_sel)
        # the trainer's own mode -> split choice: paper probes the private dev split, public the public one
        removed, _ = select_layers(selector, probe_data(side, mode), layout=lay, k=1)
        return lay.mask(removed)

    def step(state, side, generator):
        return runner.step(state, side.train, generator, mask=mask_of(side))

    def batched(state, side, generator, n):
        return runner.batched(state, side.train, generator, n, mask=mask_of(side))

    removed = [int(torch.nonzero(mask_of(s) == 0)[0]) // (2 * HIDDEN) for s in (d0, d1)]
    if mode == "paper":
        statistic, what = layer_energy_statistic(lay), "||r on layer 0||^2 - ||r on layer 1||^2"
        expected = "unbounded (the removed layer's columns are exactly 0: different supports)"
    else:
        statistic, what = projection(-_unit(width, c0)), f"projection of the release on -e{c0} (the canary's descent)"
        expected = clip
    desc = (f"DP-Flat step, sparse selection mode {mode} (real greedy sharpness probe, k=1 of 2 layers), Opacus q=1, "
            f"σ={sigma:g}, C={clip:g}: " + ("a dev-split canary flips the removed layer" if mode == "paper" else
                                           "public probe, gradient canary in the batch"))
    info = {"trainer": "dpflat", "sparse_mode": mode, "sigma": sigma, "clip": clip, "layers": LAYERS, "hidden": HIDDEN,
            "removed_layer_d0": removed[0], "removed_layer_d1": removed[1], "selection_prefix": "0 (auditor's state)",
            "probe": "probe_data(side, 'paper'): the private dev split (canary in d1)" if mode == "paper" else
            "probe_data(side, 'public'): the public split's held-out part (the same in both worlds)",
            "release": "update P_after - P_before (SGD, lr 1)", "statistic": what, "expected_sensitivity": expected,
            "claimed_sensitivity": clip, "sample_rate": 1.0}
    return Construction(name=f"dpflat-sparse-{mode}", description=desc, step_fn=step,
                        state={"prefix": p_sel.clone(), "previous_release": None}, d0=d0, d1=d1, statistic=statistic,
                        batched_step_fn=batched, info=info, **gaussian_claim(1.0 / sigma, delta))


@CONSTRUCTIONS.register("dpflat-sparse-paper")
def dpflat_sparse_paper(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8,
                        clip: float = 1.0) -> Construction:
    """One DP-Flat step after the paper-mode layer selection: a dev-split canary flips the removed layer."""
    return _sparse("paper", sigma=sigma, delta=delta, batch_size=batch_size, clip=clip)


@CONSTRUCTIONS.register("dpflat-sparse-public")
def dpflat_sparse_public(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8,
                         clip: float = 1.0) -> Construction:
    """One DP-Flat step after a public-split layer selection (a gradient canary in the batch): a control."""
    return _sparse("public", sigma=sigma, delta=delta, batch_size=batch_size, clip=clip)


__all__ = ["dpflat_sparse_paper", "dpflat_sparse_public", "layer_energy_statistic", "layout"]
