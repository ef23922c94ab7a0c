"""Book-keeping clipping (``privacy.grad_sample_mode = "bk"``, trainers/dpsgd_bk.py) against
Opacus' materialised per-sample gradients: the clipped sum Σ_i min(1, C/‖∇ℓ_i‖)·∇ℓ_i must be the
same, parameter by parameter, for full fine-tuning (word/position/type embeddings with a padding
index, LayerNorm, Linear on sequences and on the pooled vector), frozen word embeddings, LoRA and
the PEFT prefix."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch

from dp_audit.config import ModelConfig
from dp_audit.errors import UsageError
from dp_audit.trainers.dpsgd_bk import BookKeeping
from dp_audit.trainers.modeling import apply_tuning, model_inputs
from tests.test_dpflat_mechanisms import tiny_batch


def tiny_model(tuning: str, *, freeze: bool = False, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.trainers.backbone import init_weights_

    g = torch.Generator().manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BertForSequenceClassification(cfg)
    init_weights_(model, generator=g, std=0.2)
    return apply_tuning(model, ModelConfig(tuning=tuning, num_virtual_tokens=3, lora_r=2, freeze_embeddings=freeze),
                        generator=g)


def padded_batch():
    """Ids with padding (id 0, the embedding's padding index), also inside attended text (where
    its gradient is not ~0), and repeated tokens in a row (the ghost norm's same-id cross terms)."""
    b = tiny_batch(n=7, length=9, seed=4)
    b["input_ids"][:, 6:] = 0
    b["attention_mask"][:, 6:] = 0
    b["input_ids"][0, :4] = 7
    b["input_ids"][1:4, 2] = 0
    return b


def opacus_clipped_sum(model, batch, clip: float):
    from opacus import GradSampleModule

    ref = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = torch.nn.functional.cross_entropy(ref(**model_inputs(batch)).logits, batch["labels"], reduction="sum")
        loss.backward()
    for m in ref._module.modules():  # Opacus ignores padding_idx; torch's gradient of that row is 0
        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None and m.weight.requires_grad:
            m.weight.grad_sample[:, m.padding_idx] = 0
    named = [(n, p) for n, p in ref._module.named_parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for _, p in named]).norm(dim=0)
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("i,i...->...", coef, p.grad_sample) for n, p in named}, norms


@pytest.mark.parametrize("tuning,freeze", [("full", False), ("full", True), ("lora", False), ("prefix", False)])
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_bk_clipped_sum_equals_opacus_per_sample_clipping(tuning, freeze, clip):
    """Bugs caught: a wrong ghost norm (missing same-token cross terms of an embedding, the
    padding index counted, a per-sample norm summed over tokens before squaring), a layer type
    left out of the norm (LayerNorm, the pooler's 2-D Linear, the prefix embedding), clipping
    coefficients not applied to every parameter's sum, or frozen weights given a gradient."""
    model = tiny_model(tuning, freeze=freeze)
    batch = padded_batch()
    expected, norms = opacus_clipped_sum(model, batch, clip)
    model.train()
    bk = BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=clip))
    bk.loss(model(**model_inputs(batch)).logits, batch["labels"]).backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == set(expected)
    assert torch.allclose(bk.last_norms, norms, rtol=1e-4, atol=1e-6)
    if clip < 1:
        assert bool((norms > clip).all())  # every example clipped: the coefficients matter
    for n in expected:
        assert got[n] is not None, n
        assert torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-6), n
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_bk_refuses_layers_it_cannot_clip():
    """Bug caught: a trainable layer type the book-keeping pass has no norm for (here a
    Conv1d) silently left out of the clipping, so its gradient would be unclipped."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, device="meta"), torch.nn.Conv1d(1, 1, 2, device="meta"))
    with pytest.raises(UsageError, match="Conv1d"):
        BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1.0))


# ---------------------------------------------------------------- against an explicit per-example loop


def _init_(model, *, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _hf_model(kind: str):
    """Tiny BERT / RoBERTa / DistilBERT (full fine-tuning: word, position and type embeddings with
    a padding index, LayerNorm, pooler, classifier) and GPT-2 with LoRA on its Conv1D attention."""
    import transformers as tf

    small = dict(vocab_size=60, max_position_embeddings=40, pad_token_id=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "bert":
            m = tf.BertForSequenceClassification(tf.BertConfig(
                hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **small))
        elif kind == "roberta":
            m = tf.RobertaForSequenceClassification(tf.RobertaConfig(
                hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **small))
        elif kind == "distilbert":
            m = tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
                dim=16, n_layers=2, n_heads=2, hidden_dim=32, dropout=0.0, attention_dropout=0.0,
                seq_classif_dropout=0.0, **small))
        else:
            from peft import LoraConfig, TaskType, get_peft_model

            m = tf.GPT2ForSequenceClassification(tf.GPT2Config(
                vocab_size=60, n_embd=16, n_layer=2, n_head=2, n_positions=40, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=0))
            if kind == "gpt2-lora":
                m = get_peft_model(m, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["c_attn"],
                                                 fan_in_fan_out=True))
    return _init_(m, seed=3)


def _hf_batch(kind: str):
    """Padding (id 1) at the end and inside attended text, a repeated token; position ids per example (as
    trainers.modeling.encode gives them: RoBERTa's start after its padding index)."""
    g = torch.Generator().manual_seed(5)
    n, t = 5, 8
    ids = torch.randint(3, 50, (n, t), generator=g)
    ids[0, :3] = 7
    ids[:, 6:] = 1
    mask = (ids != 1).long()
    ids[1:3, 2] = 1  # the padding id inside attended text: its gradient is not ~0 (torch gives that row none)
    if kind == "roberta":
        pos = torch.cumsum(mask, dim=1) * mask + 1
    else:
        pos = torch.arange(t).expand(n, -1).contiguous()
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}, torch.randint(0, 2, (n,), generator=g)


def per_example_reference(model, inputs: dict, labels: torch.Tensor, clip: float):
    """Per-example gradients by autograd, one example at a time (no Opacus, no ghost norm):
    the norms ‖∇ℓ_i‖ over every trainable parameter and Σ_i min(1, C/(‖∇ℓ_i‖+1e-6))·∇ℓ_i per parameter."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rows = []
    for i in range(labels.shape[0]):
        logits = model(**{k: v[i:i + 1] for k, v in inputs.items()}).logits
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels[i:i + 1]),
                                    [p for _, p in named], allow_unused=True)
        rows.append([torch.zeros_like(p) if gr is None else gr.double() for (_, p), gr in zip(named, grads)])
    norms = torch.stack([torch.sqrt(sum((gr ** 2).sum() for gr in row)) for row in rows])
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    sums = {n: sum(coef[i] * rows[i][j] for i in range(len(rows))) for j, (n, _) in enumerate(named)}
    return norms, sums


@pytest.mark.parametrize("kind,tuning", [("bert", "full"), ("roberta", "full"), ("distilbert", "full"),
                                         ("gpt2-lora", "lora"), ("gpt2", "prefix"), ("gpt2", "head"),
                                         ("roberta", "lora")])
def test_bk_matches_an_explicit_per_example_autograd_loop(kind, tuning):
    """Bugs caught: a trainable parameter missing from the per-example norm (its gradient
    unclipped: every parameter of BERT/RoBERTa/DistilBERT incl. position/type embeddings,
    LayerNorms, biases, pooler, head; GPT-2's LoRA on Conv1D), a wrong ghost norm for repeated
    tokens or padding (RoBERTa's padded position ids), clipping coefficients applied to some
    parameters only. The reference uses no Opacus, so a bug shared with Opacus shows too."""
    model = _hf_model(kind)
    if kind != "gpt2-lora" and tuning != "full":
        model = _init_(apply_tuning(model, ModelConfig(tuning=tuning, num_virtual_tokens=3, lora_r=2),
                                    generator=torch.Generator().manual_seed(1)), seed=4)
    model.train()
    inputs, labels = _hf_batch(kind)
    clip = 0.05
    norms, sums = per_example_reference(model, inputs, labels, clip)
    assert bool((norms > clip).all())  # every example clipped: the coefficients matter
    bk = BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=clip))
    bk.loss(model(**inputs).logits, labels).backward()
    assert torch.allclose(bk.last_norms.double(), norms, rtol=2e-6)  # float32 accuracy: a 1e-5 miss is a bug
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
            continue
        assert p.grad is not None, n
        scale = float(sums[n].abs().max()) + 1e-6
        assert float((p.grad.double() - sums[n]).abs().max()) <= 1e-4 * scale, n


class _TiedLM(torch.nn.Module):
    """An embedding tied to an output projection (as a masked/causal LM head)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(60, 8)
        self.out = torch.nn.Linear(8, 60, bias=False)
        self.out.weight = self.emb.weight
        self.head = torch.nn.Linear(60, 2)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.head(self.out(self.emb(input_ids)).mean(1)))


def test_bk_refuses_tied_weights_whose_norm_it_would_get_wrong():
    """Bug caught: a weight shared by two layers (tied embedding / LM head) given the norm
    ‖g_emb‖² + ‖g_out‖² instead of ‖g_emb + g_out‖² (no cross term): the true norm can be larger,
    so an example's clipped contribution exceeds C. The per-example loop shows the two differ;
    bk must refuse the model before training."""
    model = _init_(_TiedLM(), seed=1)
    inputs, labels = _hf_batch("bert")
    inputs = {"input_ids": inputs["input_ids"]}
    norms, _ = per_example_reference(model, inputs, labels, 1.0)
    # what a per-module sum of squares gives (the quantity bk computed before refusing ties)
    own = []
    for i in range(labels.shape[0]):
        emb_out = model.emb(inputs["input_ids"][i:i + 1])
        w = model.emb.weight
        a = torch.autograd.grad(torch.nn.functional.cross_entropy(
            model.head(torch.nn.functional.linear(emb_out, w.detach()).mean(1)), labels[i:i + 1]), w)[0]
        b = torch.autograd.grad(torch.nn.functional.cross_entropy(
            model.head(torch.nn.functional.linear(emb_out.detach(), w).mean(1)), labels[i:i + 1]), w)[0]
        own.append(float((a.double() ** 2).sum() + (b.double() ** 2).sum()) + sum(
            float((gr.double() ** 2).sum()) for gr in torch.autograd.grad(torch.nn.functional.cross_entropy(
                model(input_ids=inputs["input_ids"][i:i + 1]).logits, labels[i:i + 1]), list(model.head.parameters()))))
    assert not torch.allclose(torch.tensor(own, dtype=torch.float64).sqrt(), norms, rtol=1e-3)
    with pytest.raises(UsageError, match="tied"):
        BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1.0))


def test_bk_refuses_gpt2_conv1d():
    """Bug caught: GPT-2's Conv1D (a module type bk has no norm for) trained in full fine-tuning
    and silently left out of the clipping."""
    with pytest.raises(UsageError, match="Conv1D"):
        BookKeeping(_hf_model("gpt2"), clip_source=SimpleNamespace(max_grad_norm=1.0))


def test_bk_refuses_an_input_shared_across_the_batch():
    """Bug caught: a layer run on a (1, T) input broadcast over the batch (BERT's position-id
    buffer when no per-example position_ids are passed): its output gradient is the whole batch's,
    so its 'per-example' norm is every example's at once; bk must refuse it with a usage error
    (exit 2), not crash on a reshape (exit 4) or, for a LayerNorm whose width the batch size
    divides, mix examples silently."""
    model = _hf_model("bert")
    model.train()
    inputs, labels = _hf_batch("bert")
    del inputs["position_ids"]
    bk = BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1.0))
    loss = bk.loss(model(**inputs).logits, labels)
    with pytest.raises(UsageError, match="shared across the batch"):
        loss.backward()


def test_bk_norms_in_float32_for_a_bfloat16_model():
    """Bug caught: per-example norms computed in the model's bfloat16 (a bf16 checkpoint loads
    as bf16 with transformers 5): a norm rounded down by bf16 sums clips too little. The norms
    of a bf16 model must equal the float32 norms of the same bf16 activations within float32
    accuracy, far tighter than bf16's 2⁻⁸."""
    model = _hf_model("bert").to(torch.bfloat16)
    model.train()
    inputs, labels = _hf_batch("bert")
    bk = BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1e6))
    logits = model(**inputs).logits
    calls = list(bk.calls)
    loss = bk.loss(logits, labels)
    outs = [c.out for c in calls]
    grads = torch.autograd.grad(loss.per_example.sum(), outs, retain_graph=True, allow_unused=True)
    ref = torch.zeros(labels.shape[0], dtype=torch.float64)
    for c, g in zip(calls, grads):  # explicit per-example gradients, in float64, from the same tensors
        if g is None:
            continue
        a, gg = c.inp, g.double()
        m = c.module
        if isinstance(m, torch.nn.Linear):
            a3, g3 = a.double().reshape(a.shape[0], -1, a.shape[-1]), gg.reshape(gg.shape[0], -1, gg.shape[-1])
            ref += torch.einsum("btp,btd->bpd", g3, a3).pow(2).sum((1, 2)) + g3.sum(1).pow(2).sum(1)
        elif isinstance(m, torch.nn.Embedding):
            onehot = torch.nn.functional.one_hot(a, m.num_embeddings).double()
            if m.padding_idx is not None:
                onehot[..., m.padding_idx] = 0
            ref += torch.einsum("btv,btd->bvd", onehot, gg).pow(2).sum((1, 2))
        else:
            xhat = torch.nn.functional.layer_norm(a.double(), m.normalized_shape, eps=m.eps)
            ref += (gg * xhat).sum(1).pow(2).sum(1) + gg.sum(1).pow(2).sum(1)
    loss.backward()
    assert bk.last_norms.dtype == torch.float32
    assert torch.allclose(bk.last_norms.double(), ref.sqrt(), rtol=2e-4)
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters() if p.requires_grad)


def test_bk_refuses_a_plain_backward_that_would_leave_unclipped_gradients():
    """Bug caught: in bk mode Opacus' hooks are removed and its optimizer noises whatever is in
    p.grad; a code path calling an ordinary ``loss.backward()`` (a new trainer's own loss, a
    loss_fn bypassing dp_criterion) would put the unclipped gradient there and release it as if
    clipped. The plain backward must fail and leave no gradient behind."""
    model = _hf_model("bert")
    model.train()
    inputs, labels = _hf_batch("bert")
    BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1.0))
    loss = torch.nn.functional.cross_entropy(model(**inputs).logits, labels)
    with pytest.raises(RuntimeError, match="unclipped"):
        loss.backward()
    assert all(p.grad is None for p in model.parameters())


class _Unused(torch.nn.Module):
    """A trainable layer the forward never calls (as a pooler a head does not use)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(60, 8)
        self.spare = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.head(self.emb(input_ids).mean(1)))


def test_bk_gives_a_zero_gradient_to_a_trainable_layer_that_did_not_run():
    """Bug caught: a trainable layer absent from the forward left with p.grad = None, on which
    Opacus' optimizer crashes (exit 4) at its first step; its clipped sum is 0."""
    model = _init_(_Unused(), seed=2)
    model.train()
    inputs, labels = _hf_batch("bert")
    bk = BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1.0))
    bk.loss(model(input_ids=inputs["input_ids"]).logits, labels).backward()
    assert all(p.grad is not None and not bool(p.grad.any()) for p in model.spare.parameters())
    assert bool(model.head.weight.grad.any())


class _InPlaceInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(60, 8)
        self.lin = torch.nn.Linear(8, 2)

    def forward(self, input_ids):
        h = self.emb(input_ids).mean(1)
        out = self.lin(h)
        h.mul_(2.0)  # the Linear's recorded input changes after it ran
        return SimpleNamespace(logits=out)


def test_bk_refuses_a_layer_input_modified_in_place():
    """Bug caught: a layer's input changed in place after the layer ran: the book-keeping pass
    (which never runs the layer's own backward, so autograd does not check it) would compute the
    norm and the sum from values the layer did not see; it must be refused (exit 2)."""
    model = _init_(_InPlaceInput(), seed=2)
    model.train()
    inputs, labels = _hf_batch("bert")
    bk = BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1.0))
    loss = bk.loss(model(input_ids=inputs["input_ids"]).logits, labels)
    with pytest.raises(UsageError, match="in place"):
        loss.backward()
