"""DP-Flat's mechanisms on a tiny BERT with a PEFT prefix (issue 5).

References: PEFT ``PeftModel.get_prompt`` (prefix layout: last dim viewed as (2L, heads, head_dim),
pairs (key, value) per layer); AWP v = γ‖P‖∇L/‖∇L‖ (Wu et al. 2020; DP-Flat arXiv 2403.04124,
DESIGN.md §4); ∇‖P − P_np‖_F = (P − P_np)/‖P − P_np‖_F (derivative of the Euclidean norm).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dp_audit.config import ModelConfig
from dp_audit.trainers.dpflat_awp import AWP, awp_rows, awp_vector, per_example_prefix_gradients, raw_prefix_gradient
from dp_audit.trainers.dpflat import attach_components
from dp_audit.trainers.dpflat_distill import Distill, clip_coefficients, distill_gradient
from dp_audit.trainers.dpflat_prefix import PrefixHook, layout_of, prefix_weight
from dp_audit.trainers.dpflat_sparse import SharpnessCurve, greedy_select, select_layers, sharpness_curve
from dp_audit.trainers.modeling import INPUT_KEYS, apply_tuning, subset

LAYERS, HIDDEN, T = 3, 32, 4


def tiny_prefix_model(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.trainers.backbone import init_weights_

    g = torch.Generator().manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BertForSequenceClassification(cfg)
    init_weights_(model, generator=g, std=0.2)
    return apply_tuning(model, ModelConfig(tuning="prefix", num_virtual_tokens=T), generator=g)


def tiny_batch(n: int = 6, length: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "position_ids": torch.arange(length).expand(n, -1).contiguous(),
            "labels": torch.randint(0, 2, (n,), generator=g)}


def _masked_prefix_model(*, seed: int, removed: list[int]):
    """A tiny prefix model whose prefix has the layers ``removed`` zeroed and masked (as the trainer
    leaves it after sparse selection): (model, prefix weight, mask, hook)."""
    model = tiny_prefix_model(seed=seed)
    w = prefix_weight(model)
    mask = layout_of(model).mask(removed)
    with torch.no_grad():
        w.mul_(mask)
    hook = PrefixHook(model)
    hook.mask = mask
    return model, w, mask, hook


def forward(model, batch, **kw):
    return model(**{k: batch[k] for k in INPUT_KEYS}, **kw)


def ce_each(model, batch):
    return torch.nn.functional.cross_entropy(forward(model, batch).logits, batch["labels"], reduction="none")


# ---------------------------------------------------------------- layout


def test_layout_zeroing_a_layer_changes_only_that_layers_prefix_keys_values():
    model = tiny_prefix_model()
    model.eval()
    layout = layout_of(model)
    assert (layout.num_layers, layout.hidden, layout.width) == (LAYERS, HIDDEN, LAYERS * 2 * HIDDEN)
    before = model.get_prompt(batch_size=1)
    w = prefix_weight(model)
    with torch.no_grad():
        w[:, layout.layer_slice(1)] = 0
    after = model.get_prompt(batch_size=1)
    for layer in range(LAYERS):
        k0, v0 = before.layers[layer].keys, before.layers[layer].values
        k1, v1 = after.layers[layer].keys, after.layers[layer].values
        if layer == 1:
            assert torch.count_nonzero(k1) == 0 and torch.count_nonzero(v1) == 0
            assert torch.count_nonzero(k0) > 0
        else:
            assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_zeroing_layer_prefix_leaves_earlier_layers_outputs_unchanged():
    model = tiny_prefix_model()
    model.eval()
    batch = tiny_batch()
    layout = layout_of(model)
    with torch.no_grad():
        h0 = forward(model, batch, output_hidden_states=True).hidden_states
        prefix_weight(model)[:, layout.layer_slice(1)] = 0
        h1 = forward(model, batch, output_hidden_states=True).hidden_states
    assert torch.equal(h0[0], h1[0]) and torch.equal(h0[1], h1[1])  # embeddings and layer 0's output
    assert not torch.allclose(h0[2], h1[2])  # layer 1's output changes


def test_key_and_value_slices_tile_the_layer_slice():
    layout = layout_of(tiny_prefix_model())
    for layer in range(LAYERS):
        k, v, kv = layout.key_slice(layer), layout.value_slice(layer), layout.layer_slice(layer)
        assert (k.start, k.stop, v.start, v.stop) == (kv.start, kv.start + HIDDEN, kv.start + HIDDEN, kv.stop)
    with pytest.raises(IndexError):
        layout.layer_slice(LAYERS)


# ---------------------------------------------------------------- AWP


def test_awp_paper_perturbation_has_norm_gamma_times_prefix_norm_along_raw_gradient():
    model = tiny_prefix_model()
    batch = tiny_batch()
    hook = PrefixHook(model)
    w = prefix_weight(model)
    p0 = w.detach().clone()
    gamma = 1e-2
    awp = AWP(model=model, hook=hook, mode="paper", gamma=gamma, active_steps=5, micro_batch=3,
              generator=torch.Generator().manual_seed(5))
    idx = torch.randperm(6, generator=torch.Generator().manual_seed(5))[:3]  # the same draw
    grad = raw_prefix_gradient(model, subset(batch, idx))
    awp.before_step(0, batch)
    v = w.detach() - p0
    assert float(v.norm()) == pytest.approx(gamma * float(p0.norm()), rel=1e-4)
    cos = float((v * grad).sum() / (v.norm() * grad.norm()))
    assert cos == pytest.approx(1.0, abs=1e-5)
    # the micro-batch matters: the full batch's gradient points elsewhere
    assert not torch.allclose(grad, raw_prefix_gradient(model, batch))
    hook.remove()


def test_awp_removes_v_after_the_step_exactly_and_keeps_the_update():
    model = tiny_prefix_model()
    batch = tiny_batch()
    hook = PrefixHook(model)
    w = prefix_weight(model)
    p0 = w.detach().clone()
    awp = AWP(model=model, hook=hook, mode="paper", gamma=1e-2, active_steps=1, micro_batch=6,
              generator=torch.Generator().manual_seed(0))
    awp.before_step(0, batch)
    assert not torch.equal(w.detach(), p0)
    awp.after_step()  # an optimiser step that did not move P
    assert torch.equal(w.detach(), p0)  # bit-exact

    # with an SGD step: the gradient is taken at P+v, the update applied to P
    awp.before_step(0, batch)
    p_pert = w.detach().clone()
    loss = torch.nn.functional.cross_entropy(forward(model, batch).logits, batch["labels"])
    (g,) = torch.autograd.grad(loss, w)
    with torch.no_grad():
        w.sub_(0.1 * g)
    awp.after_step()
    assert torch.allclose(w.detach(), p0 - 0.1 * g, atol=1e-6)
    assert not torch.allclose(p_pert, p0)
    # outside the active steps nothing happens
    after = w.detach().clone()
    awp.before_step(1, batch)
    assert torch.equal(w.detach(), after)
    hook.remove()


def test_awp_vector_helpers():
    d = torch.tensor([[3.0, 4.0]])
    assert float(awp_vector(d, weight_norm=2.0, gamma=0.5).norm()) == pytest.approx(1.0)
    rows = awp_rows(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), weight_norm=10.0, gamma=0.1)
    assert rows.norm(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert torch.equal(awp_vector(torch.zeros(3), weight_norm=1.0, gamma=1.0), torch.zeros(3))


def test_per_example_awp_gradients_are_each_examples_own_and_clipped_term_is_at_P_plus_v_i():
    from opacus import GradSampleModule

    model = tiny_prefix_model()
    batch = tiny_batch(n=4)
    w = prefix_weight(model)
    hook = PrefixHook(model)
    rows = per_example_prefix_gradients(model, hook, batch)
    for i in range(4):  # row i = ∇_P ℓ_i(P), computed one example at a time
        (gi,) = torch.autograd.grad(ce_each(model, subset(batch, slice(i, i + 1))).sum(), w)
        assert torch.allclose(rows[i], gi, atol=1e-6)
    gamma = 0.05
    norm = float(w.detach().norm())
    offsets = awp_rows(rows, weight_norm=norm, gamma=gamma)
    assert offsets.flatten(1).norm(dim=1).tolist() == pytest.approx([gamma * norm] * 4, rel=1e-5)

    # Opacus' per-sample gradients with the per-example offsets = ∇ℓ_i at P + v_i
    gsm = GradSampleModule(model)
    hook.offset = offsets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.functional.cross_entropy(forward(gsm, batch).logits, batch["labels"]).backward()
    hook.offset = None
    gs = w.grad_sample.detach()  # per-sample gradients (Opacus undoes the mean)
    gsm._close()
    with torch.no_grad():
        p0 = w.detach().clone()
    for i in range(4):
        with torch.no_grad():
            w.copy_(p0 + offsets[i])
        (gi,) = torch.autograd.grad(ce_each(model, subset(batch, slice(i, i + 1))).sum(), w)
        assert torch.allclose(gs[i], gi, atol=1e-5)
    with torch.no_grad():
        w.copy_(p0)
    hook.remove()


def test_dpsat_uses_the_previous_released_gradient():
    model = tiny_prefix_model()
    batch = tiny_batch()
    hook = PrefixHook(model)
    w = prefix_weight(model)
    p0 = w.detach().clone()
    awp = AWP(model=model, hook=hook, mode="dpsat", gamma=1e-2, active_steps=10, micro_batch=6)
    awp.before_step(0, batch)
    assert torch.equal(w.detach(), p0)  # nothing released yet: no perturbation
    released = torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    w.grad = released.clone()
    awp.after_step()
    awp.before_step(1, batch)
    v = w.detach() - p0
    cos = float((v * released).sum() / (v.norm() * released.norm()))
    assert cos == pytest.approx(1.0, abs=1e-5)
    assert float(v.norm()) == pytest.approx(1e-2 * float(p0.norm()), rel=1e-4)
    hook.remove()


# ---------------------------------------------------------------- sparse


def test_removed_layers_get_no_data_gradient_per_sample_or_summed():
    from opacus import GradSampleModule

    model = tiny_prefix_model()
    batch = tiny_batch(n=5)
    layout = layout_of(model)
    w = prefix_weight(model)
    hook = PrefixHook(model)
    hook.mask = layout.mask([0, 2])
    gsm = GradSampleModule(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.functional.cross_entropy(forward(gsm, batch).logits, batch["labels"]).backward()
    gs = w.grad_sample
    for layer in (0, 2):
        assert torch.count_nonzero(gs[..., layout.layer_slice(layer)]) == 0
        assert torch.count_nonzero(w.grad[:, layout.layer_slice(layer)]) == 0
    assert torch.count_nonzero(gs[..., layout.layer_slice(1)]) > 0
    gsm._close()
    hook.remove()


def test_without_the_mask_a_zeroed_layer_would_still_get_gradient():
    """The mask is needed: a zero prefix key/value still receives gradient (the test above can fail)."""
    model = tiny_prefix_model()
    layout = layout_of(model)
    w = prefix_weight(model)
    with torch.no_grad():
        w[:, layout.layer_slice(0)] = 0
    (g,) = torch.autograd.grad(ce_each(model, tiny_batch()).mean(), w)
    assert torch.count_nonzero(g[:, layout.layer_slice(0)]) > 0


def test_greedy_selection_removes_the_flattest_layer_each_round():
    table = {(0,): 0.5, (1,): 0.2, (2,): 0.3, (1, 0): 0.4, (1, 2): 0.1}

    def curve(removed):
        s = table[removed]
        return SharpnessCurve(removed=removed, alphas=(0.0, 1.0), losses=(1.0, 1.0 + s))

    removed, rounds = greedy_select(range(3), 2, curve)
    assert removed == [1, 2]
    assert [len(r) for r in rounds] == [3, 2]
    assert [c.removed for c in rounds[1]] == [(1, 0), (1, 2)]


def test_sharpness_probe_on_a_tiny_model():
    model = tiny_prefix_model()
    data = tiny_batch(n=12, seed=4)
    layout = layout_of(model)
    w = prefix_weight(model)
    p0 = w.detach().clone()
    hook = PrefixHook(model)
    alphas = [i / 10 for i in range(11)]
    c = sharpness_curve(model, data, hook=hook, layout=layout, removed=(1,), alphas=alphas)
    assert len(c.losses) == 11 and c.alphas[0] == 0.0 and c.alphas[-1] == 1.0
    assert torch.equal(w.detach(), p0) and hook.mask is None  # the probe leaves P as it was
    with torch.no_grad():  # loss at α = 0 is the loss with layer 1 removed
        w[:, layout.layer_slice(1)] = 0
        expected = float(ce_each(model.eval(), data).mean())
        w.copy_(p0)
    assert c.losses[0] == pytest.approx(expected, rel=1e-5)
    assert c.losses[1] > c.losses[0]  # a small step along the gradient increases the loss
    hook.remove()
    removed, rounds = select_layers(model, data, layout=layout, k=2, points=3)
    assert len(removed) == 2 and len(set(removed)) == 2 and len(rounds) == 2
    best = min(rounds[0], key=lambda c: c.sharpness)
    assert removed[0] == best.removed[-1]


# ---------------------------------------------------------------- distillation


def test_distillation_gradient_matches_autograd_and_has_norm_lambda():
    g = torch.Generator().manual_seed(5)
    p = torch.randn(4, 6, generator=g, requires_grad=True)
    anchor = torch.randn(4, 6, generator=g)
    lam = 0.01
    (auto,) = torch.autograd.grad(lam * (p - anchor).norm(), p)
    closed = distill_gradient(p, anchor, lam=lam)
    assert torch.allclose(auto, closed, atol=1e-9)
    assert float(closed.norm()) == pytest.approx(lam, rel=1e-6)
    assert torch.equal(distill_gradient(anchor, anchor, lam=lam), torch.zeros_like(anchor))


# ---------------------------------------------------------------- issue 12: DP-Flat as published, and its leaks


def _dp_optimizer(model, *, C: float, sigma: float = 0.0, E: int = 1, seed: int = 0, lr: float = 0.0):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = DPOptimizer(torch.optim.SGD(params, lr=lr), noise_multiplier=sigma, max_grad_norm=C,
                      expected_batch_size=E, generator=torch.Generator().manual_seed(seed))
    return gsm, opt


def _capture(opt):
    """Record, per step, the noised clipped sum (right after Opacus adds noise, before scaling)
    and the released gradients (what the inner optimiser steps with), with the prefix at that time."""
    log = {"noised": [], "released": [], "weight": [], "presum": []}
    add_noise, inner_step = opt.add_noise, opt.original_optimizer.step

    def wrapped_add_noise():
        log["presum"].append([p.summed_grad.detach().clone() for p in opt.params])
        add_noise()
        log["noised"].append([p.grad.detach().clone() for p in opt.params])

    def wrapped_step(*a, **k):
        log["released"].append([p.grad.detach().clone() for p in opt.params])
        log["weight"].append([p.detach().clone() for p in opt.params])
        return inner_step(*a, **k)

    opt.add_noise = wrapped_add_noise
    opt.original_optimizer.step = wrapped_step
    return log


def _one_step(gsm, before_step, stepper, step: int, batch) -> None:
    stepper.zero_grad(True)
    before_step(step, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.functional.cross_entropy(forward(gsm, batch).logits, batch["labels"]).backward()
    stepper.step()


def test_paper_awp_micro_batch_is_uniform_over_positions_and_canaries(monkeypatch):
    """Issue 12 item 3. Bug caught: v from ``batch[0:micro_batch]``. Opacus' Poisson sampler returns
    indices in increasing order and member canaries sit at the end of the private split, so with
    the slicing the last positions (the canaries) never enter v: both chi-square tests fail
    (p < 1e-30 with the old slicing, checked by restoring it)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from scipy import stats

    import dp_audit.trainers.dpflat_awp as awp_mod

    seen: list[torch.Tensor] = []

    def fake_gradient(model, micro):  # record who is in the micro-batch; no model work
        seen.append(micro["idx"].clone())
        return torch.zeros_like(prefix_weight(model))

    monkeypatch.setattr(awp_mod, "raw_prefix_gradient", fake_gradient)
    model = tiny_prefix_model()
    hook = PrefixHook(model)
    awp = AWP(model=model, hook=hook, mode="paper", gamma=1e-2, active_steps=10**9, micro_batch=2,
              generator=torch.Generator().manual_seed(11))

    # (a) Poisson batches from Opacus' sampler; the last 20 of 120 examples are the canaries
    n, canaries = 120, 20
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=0.1, generator=torch.Generator().manual_seed(3))
    sampled, chosen = torch.zeros(n), torch.zeros(n)
    for _ in range(12):
        for idx in sampler:
            idx = torch.as_tensor(idx, dtype=torch.long)
            seen.clear()
            awp.before_step(0, {"labels": idx, "idx": idx})
            awp.after_step()
            sampled[idx] += 1
            if seen:
                chosen[seen[0]] += 1
    table = torch.stack([chosen, sampled - chosen], dim=1).numpy()
    assert stats.chi2_contingency(table)[1] > 1e-3  # every example: the same P(in v | sampled)
    canary_rows = [table[n - canaries:].sum(0), table[: n - canaries].sum(0)]
    assert stats.chi2_contingency(canary_rows)[1] > 1e-3  # canaries as often as ordinary examples
    assert chosen[n - canaries:].sum() > 0

    # (b) fixed batches of 12: each position enters the micro-batch with frequency 2/12
    counts = torch.zeros(12)
    pos = torch.arange(12)
    for _ in range(3000):
        seen.clear()
        awp.before_step(0, {"labels": pos, "idx": pos})
        awp.after_step()
        counts[seen[0]] += 1
    assert stats.chisquare(counts.numpy())[1] > 1e-3
    hook.remove()


def test_awp_radius_is_the_full_embedding_norm_with_removed_layers():
    """Issue 12 item 9 (official: ‖P‖ of the whole embedding). Bug caught: radius from ‖P‖ after
    zeroing the removed columns (too small by the removed columns' share)."""
    model = tiny_prefix_model()
    layout = layout_of(model)
    w = prefix_weight(model)
    mask = layout.mask([1])
    with torch.no_grad():
        full = float(w.norm())
        removed_sq = float((w * (1 - mask)).norm()) ** 2
        w.mul_(mask)
    hook = PrefixHook(model)
    hook.mask = mask
    p0 = w.detach().clone()
    gamma = 1e-2
    awp = AWP(model=model, hook=hook, mode="paper", gamma=gamma, active_steps=1, micro_batch=6,
              generator=torch.Generator().manual_seed(0), removed_norm_sq=removed_sq)
    awp.before_step(0, tiny_batch())
    v = w.detach() - p0
    assert float(v.norm()) == pytest.approx(gamma * full, rel=1e-4)
    assert float(v.norm()) > 1.2 * gamma * float(p0.norm())  # the masked norm would be this much smaller
    assert torch.count_nonzero(v[:, layout.layer_slice(1)]) == 0  # v stays off the removed layer
    hook.remove()


def test_empty_batch_gives_no_awp_perturbation_and_no_regulariser_term():
    """An empty Poisson batch reaches AWP and distillation (issue 12 item 4). Bugs caught: a crash
    on the empty batch; a paper-mode v or a paper-mode regulariser term that does not vanish when
    no private example is sampled (it would then be data-free noise in the mechanism but is
    counted as |B|·λ∇R); DP-SAT that drops its (public) direction on an empty batch."""
    model = tiny_prefix_model()
    hook = PrefixHook(model)
    w = prefix_weight(model)
    p0 = w.detach().clone()
    empty = subset(tiny_batch(), slice(0, 0))
    for mode in ("paper", "per-example"):
        awp = AWP(model=model, hook=hook, mode=mode, gamma=1e-2, active_steps=5, micro_batch=3,
                  generator=torch.Generator().manual_seed(0))
        awp.before_step(0, empty)
        assert torch.equal(w.detach(), p0) and hook.offset is None
        assert awp.applied == (1 if mode == "per-example" else 0)  # private notes count the window's steps
        awp.after_step()
    dpsat = AWP(model=model, hook=hook, mode="dpsat", gamma=1e-2, active_steps=5, micro_batch=3)
    dpsat._prev_noisy = torch.ones_like(w)
    dpsat.before_step(1, empty)
    assert not torch.equal(w.detach(), p0)  # post-processing of the previous release: still applied
    dpsat.after_step()
    hook.remove()

    _, opt = _dp_optimizer(model, C=1.0)
    coefs = clip_coefficients(opt)  # no backward: no per-sample state at all
    assert coefs.numel() == 0
    anchor = p0 - 1.0
    paper = Distill(anchor=anchor, lam=0.1, mode="paper")
    public = Distill(anchor=anchor, lam=0.1, mode="public")
    assert torch.count_nonzero(paper.released_term(w, coefficients=coefs, expected_batch_size=4.0)) == 0
    assert torch.allclose(public.released_term(w, coefficients=coefs, expected_batch_size=4.0),
                          distill_gradient(w, anchor, lam=0.1))


def _per_example_grads(model, batch, first: torch.Tensor) -> list[torch.Tensor]:
    """Per-example gradients of every trainable parameter, flattened with ``first`` in front."""
    params = [p for p in model.parameters() if p.requires_grad]
    params = [first] + [p for p in params if p is not first]
    out = []
    for i in range(int(batch["labels"].shape[0])):
        gs = torch.autograd.grad(ce_each(model, subset(batch, slice(i, i + 1))).sum(), params)
        out.append(torch.cat([g.reshape(-1) for g in gs]))
    return out


def test_paper_distillation_weights_the_regulariser_by_each_examples_clipping_coefficient():
    """Issue 12 item 8, |B| = 6 > 1 and C small (every example clipped, distinct coefficients),
    where the two semantics differ. Official (private-transformers, ghost clipping): the release
    is (Σ_i c_i(∇CE_i + λ∇R))/E with c_i = min(1, C/(‖∇CE_i‖ + 1e-6)). Bugs caught: the old
    |B|·λ∇R (unweighted: 1/mean(c_i) times too strong, here > 100x), a regulariser that is clipped
    away, and the public mode leaking the batch into its constant term."""
    model = tiny_prefix_model()
    batch = tiny_batch(n=6, seed=7)
    w = prefix_weight(model)
    C, lam, E = 1e-3, 0.05, 6
    anchor = w.detach() - torch.randn(w.shape, generator=torch.Generator().manual_seed(2))
    (grad_r,) = torch.autograd.grad(lam * (w - anchor).norm(), w)  # independent of distill_gradient
    grads = _per_example_grads(model, batch, w)
    coefs = torch.stack([torch.clamp(C / (g.norm() + 1e-6), max=1.0) for g in grads])
    assert float(coefs.max()) < 0.5 and float(coefs.std()) > 0  # all clipped, coefficients differ
    n_w = w.numel()
    ce_sum_w = sum(c * g[:n_w] for c, g in zip(coefs, grads)).view_as(w)  # prefix comes first
    released = {}
    for mode in ("paper", "public"):
        gsm, opt = _dp_optimizer(model, C=C, E=E)
        log = _capture(opt)
        before, stepper = attach_components(opt, w, awp=None, distill=Distill(anchor=anchor, lam=lam, mode=mode),
                                            mask=None)
        _one_step(gsm, before, stepper, 0, batch)
        released[mode] = [r for r, q in zip(log["released"][0], opt.params) if q is w][0]
        gsm._close()
    assert torch.allclose(released["paper"], (ce_sum_w + float(coefs.sum()) * grad_r) / E, atol=1e-8)
    assert not torch.allclose(released["paper"], (ce_sum_w + 6 * grad_r) / E, atol=1e-6)  # the old |B|·λ∇R
    assert torch.allclose(released["public"], ce_sum_w / E + grad_r, atol=1e-8)
    # one example's term c_i(∇CE_i + λ∇R) exceeds C (up to C + λ when c_i = 1; here c_i(‖∇CE_i‖ + λ·cos)
    # = C(1 + λ·cos/‖∇CE_i‖)): the regulariser escapes clipping
    worst = max(float((c * g[:n_w].view_as(w) + c * grad_r).norm() ** 2 + (c * g[n_w:]).norm() ** 2) ** 0.5
                for c, g in zip(coefs, grads))
    assert worst > C * (1 + 1e-5)


def _presum(model, batch, *, awp_mode: str, gamma: float, C: float, micro: int, prev=None) -> torch.Tensor:
    """The pre-noise clipped sum Opacus forms in one DP-Flat step (all trainable parameters)."""
    gsm, opt = _dp_optimizer(model, C=C)
    log = _capture(opt)
    hook = PrefixHook(model)
    awp = AWP(model=gsm, hook=hook, mode=awp_mode, gamma=gamma, active_steps=10, micro_batch=micro,
              generator=torch.Generator().manual_seed(0))
    awp._prev_noisy = prev
    before, stepper = attach_components(opt, prefix_weight(model), awp=awp, distill=None, mask=None)
    _one_step(gsm, before, stepper, 1, batch)
    hook.remove()
    gsm._close()
    return torch.cat([t.reshape(-1) for t in log["presum"][0]])


def _max_remove_one_shift(model, batch, **kw) -> float:
    full = _presum(model, batch, **kw)
    n = int(batch["labels"].shape[0])
    return max(float((full - _presum(model, subset(batch, torch.tensor([i for i in range(n) if i != j])),
                                     **kw)).norm()) for j in range(n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_private_awp_modes_have_per_example_sensitivity_C(seed):
    """Issue 12 item 10: adding or removing one example moves the pre-noise sum by at most C, for
    per-example AWP and DP-SAT, over random models and data (3 seeds, γ = 0.5: a large
    perturbation, so a v that depends on other examples shows). Bug caught: a per-example v_i
    computed from the batch gradient (or any v that sees other examples) — checked by making
    per-example mode use the batch's mean gradient: the shift then exceeds C."""
    model = tiny_prefix_model(seed=seed)
    batch = tiny_batch(n=6, seed=10 + seed)
    C = 1e-3
    prev = torch.randn(prefix_weight(model).shape, generator=torch.Generator().manual_seed(seed))
    for mode, prev_ in (("per-example", None), ("dpsat", prev)):
        shift = _max_remove_one_shift(model, batch, awp_mode=mode, gamma=0.5, C=C, micro=6, prev=prev_)
        assert shift <= C * (1 + 1e-4), (mode, shift)
        assert shift > 0.5 * C  # the removed example did contribute


def test_paper_awp_sensitivity_exceeds_C_on_a_constructed_case():
    """Issue 12 item 10: paper-mode AWP computes v from the raw micro-batch gradient, so removing
    one example moves v and with it every other clipped gradient: the pre-noise sum moves by more
    than C (2.4 C here; the same data and model keep per-example AWP at <= C). Bug caught (in the
    audit itself): a paper mode that silently became DP (e.g. v not applied, or computed from
    public data), which would make the unaccounted 'awp' entry wrong."""
    model = tiny_prefix_model(seed=1)
    batch = tiny_batch(n=12, seed=11)
    C = 1e-3
    shift = _max_remove_one_shift(model, batch, awp_mode="paper", gamma=2.0, C=C, micro=12)
    assert shift > 1.5 * C
    assert _max_remove_one_shift(model, batch, awp_mode="per-example", gamma=2.0, C=C, micro=12) <= C * (1 + 1e-4)


@pytest.mark.parametrize("variant", ["per-example", "dpsat", "paper-distill"])
def test_private_modes_release_is_a_function_of_the_noised_clipped_sum(variant):
    """Issue 12 item 10 (behavioural): in the private modes the released gradient of every step is
    post-processing of Opacus' noised clipped sum s: (s/E + λ∇R(P_now))⊙mask with P_np and the mask
    from public data and P_now the public state. Bug caught: any data-dependent term added after
    the noise (paper distillation's Σc_i·λ∇R is one: the same check fails there, asserted below),
    a mask not applied to the noise, a public constant scaled by |B|."""
    model, w, mask, hook = _masked_prefix_model(seed=3, removed=[1])
    C, E, lam = 1e-2, 4, 0.05
    gsm, opt = _dp_optimizer(model, C=C, sigma=1.0, E=E, seed=4, lr=0.1)
    log = _capture(opt)
    awp_mode = "dpsat" if variant != "per-example" else "per-example"
    awp = AWP(model=gsm, hook=hook, mode=awp_mode, gamma=1e-2, active_steps=10, micro_batch=4)
    anchor = (w.detach() - torch.randn(w.shape, generator=torch.Generator().manual_seed(5))) * mask
    distill = Distill(anchor=anchor, lam=lam, mode="paper" if variant == "paper-distill" else "public")
    before, stepper = attach_components(opt, w, awp=awp, distill=distill, mask=mask)
    for step in range(3):
        _one_step(gsm, before, stepper, step, tiny_batch(n=5, seed=20 + step))
    hook.remove()
    gsm._close()
    ok = []
    k = [i for i, q in enumerate(opt.params) if q is w][0]
    for noised, released, weights in zip(log["noised"], log["released"], log["weight"]):
        expected_w = (noised[k] / E + distill_gradient(weights[k], anchor, lam=lam)) * mask
        rest = all(torch.allclose(r, s / E, atol=1e-9) for i, (r, s) in enumerate(zip(released, noised)) if i != k)
        ok.append(bool(torch.allclose(released[k], expected_w, atol=1e-9)) and rest)
    if variant == "paper-distill":
        assert not any(ok)  # the data-dependent Σc_i·λ∇R is not a function of s
    else:
        assert all(ok)


def test_dpsat_direction_is_the_previous_released_noisy_gradient_of_a_real_opacus_step():
    """Issue 12 item 10. DP-SAT's v at step t+1 is along the gradient Opacus *released* at step t
    (clipped, noised, scaled, masked), not along a fresh private gradient nor the pre-noise sum.
    Bugs caught: v from the current batch's raw gradient (= paper mode), v from the pre-noise
    clipped sum (not DP), v from a stale or unmasked gradient."""
    model, w, mask, hook = _masked_prefix_model(seed=1, removed=[2])
    gsm, opt = _dp_optimizer(model, C=1e-2, sigma=2.0, E=4, seed=8, lr=0.05)
    log = _capture(opt)
    awp = AWP(model=gsm, hook=hook, mode="dpsat", gamma=1e-2, active_steps=10, micro_batch=4)
    before, stepper = attach_components(opt, w, awp=awp, distill=None, mask=mask)
    b1, b2 = tiny_batch(n=5, seed=30), tiny_batch(n=5, seed=31)
    _one_step(gsm, before, stepper, 0, b1)
    k = [i for i, q in enumerate(opt.params) if q is w][0]
    released, presum = log["released"][0][k], log["presum"][0][k]
    p_before = w.detach().clone()
    before(1, b2)
    v = w.detach() - p_before
    cos = lambda a, b: float((a * b).sum() / (a.norm() * b.norm()))  # noqa: E731
    assert cos(v, released) == pytest.approx(1.0, abs=1e-5)
    assert float(v.norm()) == pytest.approx(1e-2 * float(p_before.norm()), rel=1e-4)
    assert torch.count_nonzero(v[:, layout_of(model).layer_slice(2)]) == 0
    assert cos(v, presum * mask) < 0.9  # the noise is in v: not the pre-noise sum
    hook.mask = mask
    fresh = raw_prefix_gradient(gsm, b2) * mask
    assert abs(cos(v, fresh)) < 0.9
    awp.after_step()
    hook.remove()
    gsm._close()


def _loader_of(*batches):
    return [tuple(b[k] for k in (*INPUT_KEYS, "labels")) for b in batches]


@pytest.mark.parametrize("awp_mode", ["paper", "per-example", "dpsat"])
def test_an_empty_poisson_batch_is_a_noise_only_step_through_opacus(awp_mode):
    """Issue 12 item 4 through the real DP step (review of 9304636): the empty batch goes through
    ``run_steps`` and Opacus' DPOptimizer with DP-Flat's hooks, not only through AWP and Distill.
    Bugs caught: the crash ``Per sample gradient is not initialized`` (Opacus has no per-sample
    state when no example was sampled; reproduced with batch_size = 2 on every DP-Flat mode), an
    empty step that is skipped instead of releasing noise (the accountant counts it), a paper-mode
    regulariser term or a data gradient on the empty step, and a step counter that misses it."""
    from types import SimpleNamespace

    from dp_audit.trainers.dpsgd import run_steps

    model, w, mask, hook = _masked_prefix_model(seed=2, removed=[1])
    C, sigma, E, lam = 1e-2, 1.5, 4, 0.05
    gsm, opt = _dp_optimizer(model, C=C, sigma=sigma, E=E, seed=6, lr=0.05)
    log = _capture(opt)
    awp = AWP(model=gsm, hook=hook, mode=awp_mode, gamma=1e-2, active_steps=10, micro_batch=2,
              generator=torch.Generator().manual_seed(1))
    anchor = (w.detach() - torch.randn(w.shape, generator=torch.Generator().manual_seed(9))) * mask
    distill = Distill(anchor=anchor, lam=lam, mode="paper")
    before, stepper = attach_components(opt, w, awp=awp, distill=distill, mask=mask)
    full = tiny_batch(n=3, seed=40)
    empty = subset(full, slice(0, 0))
    setup = SimpleNamespace(steps=3)
    run_steps(gsm, stepper, _loader_of(full, empty, full), setup, cfg=SimpleNamespace(train=SimpleNamespace(progress=False)),
              desc="", before_step=before)
    hook.remove()
    gsm._close()
    assert len(log["released"]) == 3  # three released gradients: the empty step is not skipped
    assert stepper.released == 3  # what the ledger's observed.steps reports
    k = [i for i, q in enumerate(opt.params) if q is w][0]
    presum, noised, released = log["presum"][1], log["noised"][1], log["released"][1]
    assert all(torch.count_nonzero(s) == 0 for s in presum)  # no data on the empty step
    assert torch.allclose(released[k], noised[k] / E * mask, atol=1e-9)  # noise only: no Σc_i·λ∇R term
    assert float(noised[k].std()) == pytest.approx(sigma * C, rel=0.1)  # the noise is there, std σC


def test_private_awp_notes_do_not_depend_on_the_batch_sizes():
    """Review of 9304636: the manifest's ``notes.dpflat.awp`` (``applied``, ``mean_relative_norm``)
    is released with the run and is not in ``unaccounted``, so in the private modes it must not be
    a statistic of the private data. Bug caught: per-example AWP counting only the non-empty
    Poisson batches (a batch_size = 2 run recorded applied = 66 of 78: the number of empty batches,
    a function of which examples were sampled), or measuring ‖v_i‖ over the private examples. The
    notes must equal those of a run on other data with other batch sizes."""
    model = tiny_prefix_model(seed=4)
    hook = PrefixHook(model)
    notes = []
    for sizes, seed in (([0, 3, 0, 2], 50), ([4, 1, 5, 4], 60)):
        awp = AWP(model=model, hook=hook, mode="per-example", gamma=1e-2, active_steps=3, micro_batch=1)
        for step, n in enumerate(sizes):
            awp.before_step(step, tiny_batch(n=n, seed=seed + step))
            awp.after_step()
        notes.append((awp.applied, awp.rel_norms))
    hook.remove()
    assert notes[0] == notes[1]
    assert notes[0][0] == 3  # the steps of the window, empty ones included
