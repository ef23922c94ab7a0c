"""Contract tests over every registered attack (``ATTACKS``; DESIGN.md §1, §5).

For each attack: one finite float64 score per example, identical scores from identical inputs
(a fresh instance, twice), permutation equivariance, one-line errors for missing references or
signals, and the direction on really trained tiny models: a BERT classifier (classifier attacks,
reference attacks with reference models trained the same way on random halves of the canaries)
and a GPT-2 causal LM (zlib, min-k%, min-k%++, exposure) fine-tuned non-privately on the member
canaries only, so members must score higher (AUC clearly above 0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_audit.attacks.base import ATTACKS, make_attack
from dp_audit.attacks.signals import ReferenceSignals, Signals, compute_signals
from dp_audit.errors import UsageError
from tests.test_attacks_tiny_models import WORDS, make_tokenizer, tiny_bert, tiny_gpt2

NAMES = list(ATTACKS.names())
N, R, L, K, C = 30, 6, 7, 20, 3


def synthetic(kind: str, *, seed: int = 0) -> tuple[Signals, ReferenceSignals]:
    """Signals with every field an attack of ``kind`` may read, and R reference models."""
    rng = np.random.default_rng(seed)

    def one(shift: float) -> Signals:
        if kind == "classifier":
            logits = rng.normal(size=(N, C)) + shift
            labels = rng.integers(0, C, size=N)
            from dp_audit.attacks.signals import confidence_logit_from_logits
            from scipy.special import log_softmax

            loss = -log_softmax(logits, axis=1)[np.arange(N), labels]
            return Signals(loss=loss, logits=logits, labels=labels,
                           confidence_logit=confidence_logit_from_logits(logits, labels),
                           text_bytes_zlib=rng.integers(20, 60, size=N))
        lp = -rng.exponential(2.0, size=(N, L))
        mask = np.ones((N, L), bool)
        mask[:, -2:] = rng.random((N, 2)) < 0.5
        return Signals(loss=-lp.mean(axis=1) + shift, token_logprobs=lp, token_mask=mask,
                       token_mu=-np.full((N, L), 2.0), token_sigma=rng.uniform(0.5, 2.0, size=(N, L)),
                       text_bytes_zlib=rng.integers(20, 60, size=N),
                       candidate_loss=rng.exponential(2.0, size=(N, K)))

    target = one(0.0)
    in_mask = rng.random((R, N)) < 0.5
    in_mask[0], in_mask[1] = True, False  # every example has IN and OUT models
    ref = ReferenceSignals(signals=tuple(one(0.1 * r) for r in range(R)), in_mask=in_mask)
    return target, ref


def kind_of(name: str) -> str:
    return ATTACKS.get(name).kinds[0]


def scores_of(name: str, target: Signals, ref: ReferenceSignals) -> np.ndarray:
    attack = make_attack(name)
    return attack.fit(ref if attack.needs_reference else None).score_samples(target)


def permuted(sig: Signals, perm: np.ndarray) -> Signals:
    return sig.subset(perm)


@pytest.mark.parametrize("name", NAMES)
def test_declares_its_needs(name):
    cls = ATTACKS.get(name)
    assert cls.name == name
    assert cls.needs_reference in (0, "offline", "online")
    assert cls.kinds and set(cls.kinds) <= {"classifier", "causal-lm"}
    assert cls.requires and all(r in {f for f in Signals.__dataclass_fields__} for r in cls.requires)


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_float(name):
    target, ref = synthetic(kind_of(name))
    s = scores_of(name, target, ref)
    assert s.shape == (N,) and s.dtype == np.float64 and np.all(np.isfinite(s))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    target, ref = synthetic(kind_of(name), seed=3)
    target2, ref2 = synthetic(kind_of(name), seed=3)
    np.testing.assert_array_equal(scores_of(name, target, ref), scores_of(name, target2, ref2))
    attack = make_attack(name)
    attack.fit(ref if attack.needs_reference else None)
    np.testing.assert_array_equal(attack.score_samples(target), attack.score_samples(target))


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariant(name):
    target, ref = synthetic(kind_of(name), seed=5)
    perm = np.random.default_rng(9).permutation(N)
    ref_p = ReferenceSignals(signals=tuple(permuted(s, perm) for s in ref.signals), in_mask=ref.in_mask[:, perm])
    np.testing.assert_allclose(scores_of(name, permuted(target, perm), ref_p), scores_of(name, target, ref)[perm],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_missing_inputs_are_one_line_usage_errors(name):
    attack = make_attack(name)
    target, ref = synthetic(kind_of(name))
    if attack.needs_reference:
        with pytest.raises(UsageError, match="reference") as exc:
            attack.score_samples(target)
        assert "\n" not in str(exc.value)
    bare = Signals(loss=np.ones(N)) if "loss" in attack.requires and len(attack.requires) > 1 else None
    if bare is not None:
        fresh = make_attack(name).fit(ref if attack.needs_reference else None)
        with pytest.raises(UsageError, match="needs signal") as exc:
            fresh.score_samples(bare)
        assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- trained tiny models

M_CLS = 80
N_REF = 8


def rare_tokenizer(m: int):
    """The test vocabulary plus one reserved word per canary ("u0", "u1", ...): as in the
    built-in rare-token canaries, each canary's first token is seen nowhere else, so its
    embedding row is a per-canary parameter that only training on that canary moves."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tests.test_attacks_tiny_models import SPECIAL

    vocab = {w: i for i, w in enumerate(SPECIAL + list(WORDS) + [f"u{i}" for i in range(m)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def train_classifier(tok, texts, labels, *, seed: int, steps: int = 60):
    from transformers import BertConfig, BertForSequenceClassification

    from tests.test_attacks_tiny_models import seeded_init_

    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2, pad_token_id=0,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = seeded_init_(BertForSequenceClassification(cfg), seed=seed).train()
    enc = tok(list(texts), padding=True, return_tensors="pt")
    y = torch.as_tensor(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def classifier_world():
    """A target and N_REF reference classifiers trained full-batch on mislabelled rare-token texts:
    the target on the members, reference r on its own random half (Bernoulli(1/2) IN mask)."""
    rng = np.random.default_rng(0)
    tok = rare_tokenizer(M_CLS)
    texts = [f"u{i} " + " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), size=4)) for i in range(M_CLS)]
    labels = rng.integers(0, 2, size=M_CLS)
    member = rng.random(M_CLS) < 0.5
    model = train_classifier(tok, [t for t, m in zip(texts, member) if m], labels[member], seed=1)
    target = compute_signals(model, tok, texts, labels, kind="classifier", progress=False)
    sigs, masks = [], []
    for r in range(N_REF):
        mask = np.random.default_rng([7, r]).random(M_CLS) < 0.5
        ref_model = train_classifier(tok, [t for t, m in zip(texts, mask) if m], labels[mask], seed=1)
        sigs.append(compute_signals(ref_model, tok, texts, labels, kind="classifier", progress=False))
        masks.append(mask)
    return target, ReferenceSignals(signals=tuple(sigs), in_mask=np.stack(masks)), member


@pytest.fixture(scope="module")
def lm_world():
    """A tiny GPT-2 fine-tuned on member secret canaries ("my pin is d d d d d d")."""
    from dp_audit.lm_canaries import make_secret_canaries, secret_candidates

    cans = make_secret_canaries(24, rng=np.random.default_rng(1), template="my pin is {secret}")
    texts = [c["text"] for c in cans]
    member = np.array([c["member"] for c in cans])
    candidates = secret_candidates(64, rng=np.random.default_rng(2), template="my pin is {secret}")
    tok = make_tokenizer(bert_style=False)
    model = tiny_gpt2(seed=0).train()
    ids = torch.as_tensor([tok(t)["input_ids"] for t, m in zip(texts, member) if m])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return compute_signals(model, tok, texts, None, kind="causal-lm", candidates=candidates, progress=False), member


@pytest.mark.parametrize("name", NAMES)
def test_direction_on_trained_tiny_model(name, request):
    from sklearn.metrics import roc_auc_score

    attack = make_attack(name)
    if "classifier" in attack.kinds:
        target, ref, member = request.getfixturevalue("classifier_world")
    else:
        (target, member), ref = request.getfixturevalue("lm_world"), None
    scores = attack.fit(ref if attack.needs_reference else None).score_samples(target)
    auc = roc_auc_score(member, scores)
    # under the null (no membership signal) the AUC of 80 examples has sd ≈ 0.065: 0.7 is > 3 sd above 0.5
    assert auc > 0.7, f"{name}: AUC {auc:.3f}"
