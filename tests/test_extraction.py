"""The extraction check (``dp_audit.attacks.extraction``): generation from the canary prefix,
hit counting, and the extraction bound P[extracted] <= e^ε·(S + 1)/|R| + δ.

Validity is checked on simulations where the null is exact: a canary not trained on is extracted
with probability exactly p_out = (S + 1)/|R| (S + 1 distinct decodings, a uniform secret), and a
member with probability e^ε·p_out + δ, the most (ε, δ)-DP allows for that event.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dp_audit.attacks.extraction import (SecretSplit, decode_tokens, extraction_check, extraction_epsilon_bound,
                                         extraction_null_probability, infer_split, normalise, split_from_template)
from dp_audit.errors import UsageError
from tests.test_attacks_tiny_models import make_tokenizer, tiny_gpt2

ALPHA, DELTA = 0.05, 1e-5


def test_greedy_decoding_matches_transformers_generate():
    """Bug caught: reading the logits of the wrong position (e.g. the first token instead of the
    last) or appending tokens in the wrong order: our decoder must equal HF greedy generate."""
    tok = make_tokenizer(bert_style=False)
    model = tiny_gpt2(seed=3)
    prompt = torch.as_tensor([tok("my pin is")["input_ids"], tok("the cat sat")["input_ids"]])
    ours = decode_tokens(model, prompt, steps=6, greedy=True)
    with torch.inference_mode():
        ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)[:, prompt.shape[1]:]
    assert torch.equal(ours, ref)


def test_sampling_uses_the_given_generator_only():
    """Bug caught: sampling from torch's global RNG (runs not reproducible, or silently changed by
    other code): same seed -> same samples, even after the global RNG moves; another seed differs."""
    model = tiny_gpt2(seed=3)
    prompt = torch.as_tensor([[10, 11, 12]] * 8)
    a = decode_tokens(model, prompt, steps=5, greedy=False, generator=torch.Generator().manual_seed(1))
    torch.rand(100, generator=None)  # move the global RNG
    b = decode_tokens(model, prompt, steps=5, greedy=False, generator=torch.Generator().manual_seed(1))
    c = decode_tokens(model, prompt, steps=5, greedy=False, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_restricts_samples_to_the_k_most_likely_tokens():
    """Bug caught: top-k masking the wrong tokens (k least likely, or an off-by-one keeping k + 1)."""
    model = tiny_gpt2(seed=3)
    prompt = torch.as_tensor([[10, 11, 12]] * 64)
    with torch.inference_mode():
        top2 = set(torch.topk(model(input_ids=prompt[:1]).logits[0, -1], 2).indices.tolist())
        s = decode_tokens(model, prompt, steps=1, greedy=False, generator=torch.Generator().manual_seed(0), top_k=2)
    assert set(s[:, 0].tolist()) <= top2


def trained_on_one_secret(secret_text: str, *, steps: int = 120):
    tok = make_tokenizer(bert_style=False)
    model = tiny_gpt2(seed=0).train()
    ids = torch.as_tensor([tok(secret_text)["input_ids"]] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def test_a_memorised_secret_is_extracted_and_others_are_not():
    """A tiny GPT-2 trained on one secret: greedy and (nearly) every sample reproduce it; other
    secrets with the same prefix are never reproduced. Bugs caught: comparing the wrong slice of
    the continuation (prefix included, or one token short), no whitespace normalisation, greedy
    hits counted as sampled hits."""
    model, tok = trained_on_one_secret("my pin is 4 8 1 5 9 2")
    texts = ["my pin is 4 8 1 5 9 2", "my pin is 0 3 7 7 1 6", "my pin is 4 8 1 5 9 3"]
    res = extraction_check(model, tok, texts, split=split_from_template("my pin is {secret}"), samples=8, seed=0)
    assert res.greedy_hit.tolist() == [True, False, False]
    assert res.sampled_hits[0] >= 7 and res.sampled_hits[1:].tolist() == [0, 0]
    assert res.secret_tokens.tolist() == [6, 6, 6]
    assert res.scores[0] > 0.8 and res.scores[1] == 0.0
    member = np.array([True, False, False])
    assert res.totals(member)["members"]["greedy_extracted"] == 1
    assert res.totals(member)["nonmembers"]["extracted_any"] == 0


def test_batch_size_does_not_change_the_result():
    """Batched generation: the same hits with batch size 1 and 64 for greedy decoding (sampling
    consumes the generator in batch order, so only greedy is compared). Bug caught: rows of a
    batch mixed up (hits attributed to the wrong canary)."""
    model, tok = trained_on_one_secret("my pin is 4 8 1 5 9 2", steps=60)
    texts = ["my pin is 0 3 7 7 1 6", "my pin is 4 8 1 5 9 2", "the cat sat 1 2"]
    split = SecretSplit(prefix="", source="given")
    with pytest.raises(UsageError):
        extraction_check(model, tok, texts, split=split, samples=0)  # empty prefix -> nothing to prompt
    prefixes = [SecretSplit(prefix=p) for p in ("my pin is ",)]
    a = extraction_check(model, tok, texts[:2], split=prefixes[0], samples=0, batch_size=1)
    b = extraction_check(model, tok, texts[:2], split=prefixes[0], samples=0, batch_size=64)
    assert a.greedy_hit.tolist() == b.greedy_hit.tolist() == [False, True]


def test_split_inference_and_normalisation():
    """Bugs caught: a common prefix cut inside a word or secret ("my pin is 4" when every secret
    starts with 4 is cut back to a word boundary only with candidates), templates with a suffix."""
    texts = ["my pin is 4 1 2", "my pin is 4 9 9"]
    assert infer_split(texts).prefix == "my pin is 4 "
    assert infer_split(texts + ["my pin is 0 0 0"]).prefix == "my pin is "
    assert infer_split(["a b", "c d"]) is None
    sp = split_from_template("code {secret} end")
    assert sp.secret_of("code 1 2 end") == "1 2" and normalise(" 1  2\n") == "1 2"
    with pytest.raises(UsageError):
        sp.secret_of("other 1 2 end")
    with pytest.raises(UsageError):
        split_from_template("{secret} only")


def simulate(eps: float, *, seed: int, m: int, space: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    member = rng.random(m) < 0.5
    p0 = (samples + 1) / space  # exact: S + 1 distinct decodings, a uniform secret
    p = np.where(member, min(1.0, math.exp(eps) * p0 + DELTA), p0)
    return rng.random(m) < p, member


@pytest.mark.parametrize("eps_true", [0.0, 1.0, 3.0])
def test_extraction_bound_is_valid_on_the_worst_case_null(eps_true):
    """Over 400 simulated audits with the largest hit rates (ε, δ)-DP allows, the bound exceeds the
    true ε in at most α of them (+ 3 binomial s.e.). Small |R| = 100 with S = 4 makes non-member
    hits common. Bugs caught: p_out = 1/|R| (forgetting the S + 1 decodings), counting
    non-members' hits, a missing α split over the j grid."""
    bad = 0
    trials = 400
    for seed in range(trials):
        hit, member = simulate(eps_true, seed=seed, m=200, space=100, samples=4)
        p0 = extraction_null_probability(decodings=5, space_size=100)
        bad += extraction_epsilon_bound(hit, member=member, p_out=p0, delta=DELTA, alpha=ALPHA).epsilon_lb > eps_true + 1e-9
    assert bad / trials <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials)


def test_extraction_bound_refutes_when_members_are_extracted():
    """A non-private model that reproduces most member secrets of a 10^6 space: the bound is far
    above ε = 1 (20 of 30 members extracted with S = 16 gives about 4.7); with no member extracted
    it is 0. Bugs caught: the bound computed from all canaries instead of members (m too large),
    the wrong sign of ln(j α / (|J| m) − δ)."""
    member = np.array([True] * 30 + [False] * 30)
    hit = np.zeros(60, dtype=bool)
    hit[:20] = True
    p0 = extraction_null_probability(decodings=17, space_size=10**6)
    est = extraction_epsilon_bound(hit, member=member, p_out=p0, delta=DELTA, alpha=ALPHA)
    assert est.method == "extraction" and est.counts["extracted_members"] == 20 and est.m == 30
    # closed form at j = 16: ln(1/p0) + ln(16·α/(|J|·m) − δ), |J| = 5 (1, 2, 4, 8, 16)
    expect = math.log(10**6 / 17) + math.log(16 * ALPHA / (5 * 30) - DELTA)
    assert est.epsilon_lb == pytest.approx(expect, rel=1e-9) and est.epsilon_lb > 4.0
    assert extraction_epsilon_bound(np.zeros(60, bool), member=member, p_out=p0, delta=DELTA,
                                    alpha=ALPHA).epsilon_lb == 0.0


def test_null_probability_holds_when_secrets_are_distinct():
    """Review fix: user canaries often have *distinct* secrets (drawn without replacement). Then a
    non-member's secret is uniform on R minus the other canaries' secrets, which a model trained on
    them can avoid: with |R| = 10, m = 5 and the 4 others memorised, a decoder that outputs a
    uniformly random *unmemorised* secret hits the non-member with probability 1/6, not 1/10.
    Simulated over 20 000 draws: the hit rate exceeds (S+1)/|R| and stays within
    (S+1)/(|R| − m + 1). Bug caught: p_out = (S+1)/|R| for distinct secrets (anti-conservative)."""
    rng = np.random.default_rng(0)
    space, m, trials = 10, 5, 20000
    hits = 0
    for _ in range(trials):
        secrets = rng.permutation(space)[:m]  # distinct secrets; canary 0 is the non-member
        known = set(secrets[1:].tolist())
        guess = rng.choice([x for x in range(space) if x not in known])
        hits += int(guess == secrets[0])
    rate = hits / trials
    se = math.sqrt(rate * (1 - rate) / trials)
    old = extraction_null_probability(decodings=1, space_size=space)
    new = extraction_null_probability(decodings=1, space_size=space, other_canaries=m - 1)
    assert rate > old + 5 * se and rate <= new + 3 * se
    assert new == pytest.approx(1 / 6)
