"""ClassifierEvaluator and per-layer prefix groups on a tiny random-init BERT classifier
(hidden 32, 2 layers, 2 heads) with a PEFT prefix (5 virtual tokens). No tokenizer, no download."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dp_audit.io import dumps_json
from dp_audit.landscapes.evaluation import ClassifierEvaluator, mean_loss_and_grad
from dp_audit.landscapes.params import select_parameters, zero_group
from dp_audit.landscapes.prefix import prefix_layer_groups, prefix_parameter
from dp_audit.landscapes.probes import ProbeSpec, run_probes
from dp_audit.landscapes.sharpness import per_layer_sharpness

HIDDEN, LAYERS, TOKENS, VOCAB = 32, 2, 5, 100


def build(seed: int = 0):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.hf_compat import enable_prefix_tuning, quiet_transformers

    quiet_transformers()
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    with torch.random.fork_rng():  # HF/PEFT draw their init from the global RNG: leave it untouched
        base = BertForSequenceClassification(cfg)
        model = get_peft_model(enable_prefix_tuning(base), PrefixTuningConfig(task_type="SEQ_CLS",
                                                                               num_virtual_tokens=TOKENS))
    g = torch.Generator().manual_seed(seed)  # then re-initialise every weight from an explicit generator
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.5 if "prompt_encoder" in name else 0.05, generator=g)
    return model


def make_batches(n_batches: int = 3, batch: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        length = 8 + 3 * b  # batches of different lengths, right-padded rows inside
        ids = torch.randint(1, VOCAB, (batch, length), generator=g)
        lens = torch.randint(3, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lens[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (batch,), generator=g)})
    return out


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.fixture(scope="module")
def batches():
    return make_batches()


def test_classifier_evaluator_matches_direct_forward(model, batches):
    ev = ClassifierEvaluator(batches, batch_size=4)  # re-batched differently from the input batches
    res = ev(model)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
                            for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    np.testing.assert_allclose(res.losses, torch.nn.functional.cross_entropy(logits, labels, reduction="none"),
                               atol=1e-5)
    assert torch.equal(res.correct, logits.argmax(-1) == labels) and res.n == 18
    sub = ev(model, indices=[3, 17, 0])
    np.testing.assert_allclose(sub.losses, res.losses[[3, 17, 0]], atol=1e-5)
    loss, (g,) = mean_loss_and_grad(model, ev, [prefix_parameter(model)[1]])
    assert loss == pytest.approx(res.mean_loss(), abs=1e-5) and g.abs().sum() > 0


def test_prefix_groups_are_the_layers_key_value_prefix(model):
    """Checked against the past key/values PEFT builds: zeroing group l zeroes exactly layer l's
    key and value prefix; "key"/"value" groups zero only that half."""
    groups = prefix_layer_groups(model)
    name, P = prefix_parameter(model)
    assert [g.name for g in groups] == ["prefix.layer0", "prefix.layer1"] and "prompt_encoder" in name
    assert P.shape == (TOKENS, LAYERS * 2 * HIDDEN)
    masks = torch.stack([g.full_mask() for g in groups])
    assert torch.equal(masks.sum(0), torch.ones_like(P))  # a partition of P's entries
    before = P.detach().clone()
    for part in ("both", "key", "value"):
        for layer, grp in enumerate(prefix_layer_groups(model, part=part)):
            with zero_group(grp), torch.no_grad():
                cache = model.get_prompt(batch_size=1)
                for other in range(LAYERS):
                    k, v = cache.layers[other].keys, cache.layers[other].values
                    hit = other == layer
                    assert bool((k == 0).all()) == (hit and part in ("both", "key"))
                    assert bool((v == 0).all()) == (hit and part in ("both", "value"))
            assert torch.equal(P, before)


def test_zeroing_a_layer_changes_the_output_and_is_undone(model, batches):
    ev = ClassifierEvaluator(batches)
    base = ev(model).losses
    with zero_group(prefix_layer_groups(model)[1]):
        removed = ev(model).losses
    assert not torch.allclose(base, removed)
    assert torch.equal(ev(model).losses, base)


def test_per_layer_prefix_sharpness_both_modes(model, batches):
    ev = ClassifierEvaluator(batches)
    groups = prefix_layer_groups(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in ("restrict", "remove"):
        res = per_layer_sharpness(model, ev, groups, alphas=[0, 0.5, 1.0], mode=mode)
        assert len(res.sharpness) == LAYERS and all(s >= 0 for s in res.sharpness)
        assert all(c.grad_norm > 0 for c in res.curves)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_run_probes_on_a_prefix_model_gives_audit_json_landscapes(model, batches):
    evs = {"train": ClassifierEvaluator(batches[:2]), "dev": ClassifierEvaluator(batches[2:])}
    specs = [
        ProbeSpec("curve-gaussian", {"n_directions": 2, "etas": [-0.5, 0.0, 0.5]}),
        {"name": "curve-filter", "n_directions": 2, "etas": [0.0, 0.5], "splits": ["dev"],
         "params": {"include": ["prompt_encoder"]}},
        ProbeSpec("sharpness-rho", {"rho": 0.1, "steps": 2}),
        ProbeSpec("dpflat-probe", {"alphas": [0, 0.5, 1], "scale": "weight", "radius": 1e-2}),
        ProbeSpec("hessian-top", {"max_iter": 3}),
        ProbeSpec("hessian-trace", {"max_iter": 3, "min_samples": 2, "max_examples": 6}),
        ProbeSpec("prefix-layer-sharpness", {"alphas": [0, 1], "mode": "remove"}),
    ]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run_probes(model, evs, specs, generator=torch.Generator().manual_seed(0), progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    land = json.loads(dumps_json(out))
    assert [(c["probe"], c["split"]) for c in land["curves"]] == [("gaussian", "train"), ("gaussian", "dev"),
                                                                    ("filter", "dev")]
    assert land["sharpness"]["sharpness-rho"]["train"]["rho"] == 0.1
    assert land["sharpness"]["dpflat-probe"]["dev"]["scale"] == "weight"
    assert land["curvature"]["lambda_max"] == land["curvature"]["hessian-top"]["train"]["value"]
    assert land["curvature"]["hessian-trace"]["train"]["n_examples"] == 6
    assert land["per_layer"]["prefix-layer-sharpness"]["dev"]["groups"] == ["prefix.layer0", "prefix.layer1"]
    # the report's reader accepts it (docs/formats.md "landscapes")
    from dp_audit.reports.viewmodel import _landscapes

    view = _landscapes({"landscapes": land})
    assert len(view.curves) == 3 and any(k.startswith("curvature.lambda_max") for k, _ in view.summary)
    again = run_probes(model, evs, specs, generator=torch.Generator().manual_seed(0), progress=False)
    assert json.loads(dumps_json(again)) == land  # deterministic under the seed


def test_prefix_selection_is_the_trainable_part(model):
    names = [n for n, _ in select_parameters(model)]
    assert any("prompt_encoder" in n for n in names)
    assert all("prompt_encoder" in n or "classifier" in n for n in names)


def test_hessian_vector_product_matches_finite_differences(model, batches):
    """Double backward through BERT + prefix (math attention) against central differences of the
    gradient: Hv ≈ (g(w + εv) − g(w − εv)) / 2ε."""
    from dp_audit.landscapes.autodiff import hessian_vector_product, selection_grad
    from dp_audit.landscapes.params import as_selection, preserved, set_offset

    ev = ClassifierEvaluator(batches)
    sel = as_selection([prefix_parameter(model)])
    (v,) = [torch.randn(sel[0].param.shape, generator=torch.Generator().manual_seed(4))]
    v = v / v.norm()
    (hv,) = hessian_vector_product(model, ev, sel, [v])
    eps = 1e-2
    with preserved(model, sel) as base:
        set_offset(sel, base, [v], eps)
        _, (gp,) = selection_grad(model, ev, sel)
        set_offset(sel, base, [v], -eps)
        _, (gm,) = selection_grad(model, ev, sel)
    fd = (gp - gm) / (2 * eps)
    assert float((hv - fd).norm() / fd.norm()) < 0.05
