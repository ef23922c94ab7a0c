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
from dp_audit.trainers.dpflat_distill import Distill, distill_gradient
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
    awp = AWP(model=model, hook=hook, mode="paper", gamma=gamma, active_steps=5, micro_batch=3)
    grad = raw_prefix_gradient(model, subset(batch, slice(0, 3)))
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
    awp = AWP(model=model, hook=hook, mode="paper", gamma=1e-2, active_steps=1, micro_batch=6)
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


def test_distillation_modes_paper_scales_with_batch_public_does_not():
    g = torch.Generator().manual_seed(6)
    p, anchor = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    grad = distill_gradient(p, anchor, lam=0.01)
    paper = Distill(anchor=anchor, lam=0.01, mode="paper")
    public = Distill(anchor=anchor, lam=0.01, mode="public")
    assert torch.allclose(paper.released_term(p, batch_size=7, expected_batch_size=4.0), grad * 7 / 4)
    assert torch.equal(public.released_term(p, batch_size=7, expected_batch_size=4.0), grad)
    assert torch.equal(public.released_term(p, batch_size=0, expected_batch_size=4.0), grad)


def test_paper_distillation_escapes_clipping_sensitivity_C_plus_lambda():
    """One example, no noise: the released sum (times the expected batch size) is
    clip(∇CE) + λ∇R in paper mode, whose norm can exceed C (up to C + λ); public mode adds λ∇R
    after scaling, as a data-independent constant."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from dp_audit.trainers.dpflat import _chain_step_hook

    model = tiny_prefix_model()
    batch = tiny_batch(n=1)
    w = prefix_weight(model)
    C, lam, E = 1e-3, 0.5, 1.0
    anchor = w.detach() - torch.ones_like(w)  # ∇R = (P − P_np)/‖P − P_np‖ = all-equal unit vector
    results = {}
    for mode in ("none", "paper", "public"):
        gsm = GradSampleModule(model)
        opt = DPOptimizer(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0),
                          noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=int(E))
        if mode != "none":
            d = Distill(anchor=anchor, lam=lam, mode=mode)
            _chain_step_hook(opt, lambda o, d=d: d.add_to_grad_(w, batch_size=1, expected_batch_size=E))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.nn.functional.cross_entropy(forward(gsm, batch).logits, batch["labels"]).backward()
        opt.step()
        results[mode] = w.grad.detach().clone()
        opt.zero_grad(True)
        gsm._close()
    unit = torch.ones_like(w) / torch.ones_like(w).norm()
    assert torch.allclose(results["paper"], results["none"] + lam * unit, atol=1e-7)
    assert torch.allclose(results["public"], results["none"] + lam * unit, atol=1e-7)
    # the whole per-example contribution (all parameters) of the CE term is clipped to C ...
    assert float(results["none"].norm()) <= C * (1 + 1e-4)
    # ... but with the regulariser the released contribution of that one example exceeds C
    assert float(results["paper"].norm()) > C + 0.9 * lam
