"""Extraction check for secret canaries (Carlini et al. 2019, "The Secret Sharer", §8; Carlini et
al. 2021, "Extracting Training Data from Large Language Models"): does the model, prompted with a
canary's prefix ("my PIN is"), *generate* the canary's secret?

For each canary, greedy decoding and S sampled continuations (temperature T, optional top-k,
drawn with an explicit ``torch.Generator``) of exactly as many tokens as the secret has; a
continuation extracts the secret when its decoded text equals the secret after whitespace
normalisation. Generation is batched: canaries whose prefixes have the same token length are
stacked (no padding, so the model sees its usual positions, PEFT prefixes and adapters included);
the key/value cache is not used (secrets are a few tokens; this keeps every model type working).

The per-canary score ``(greedy hit + sampled hits) / (S + 1)`` (higher = member) is a randomised
function of the released model and the canary alone, with randomness drawn from a seed fixed in
advance and independent of membership: a post-processing of the model, so the one-run bounds of
``dp_audit.estimate`` are valid on it as on any other canary score (docs/language-models.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from dp_audit.errors import UsageError


def normalise(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class SecretSplit:
    """How canary texts split into a generation prefix and a secret: ``prefix + secret + suffix``."""

    prefix: str
    suffix: str = ""
    source: str = "given"  # given | template | inferred

    def secret_of(self, text: str) -> str:
        if not text.startswith(self.prefix) or not text.endswith(self.suffix) \
                or len(text) < len(self.prefix) + len(self.suffix):
            raise UsageError(f"canary text {text[:60]!r} does not have the form {self.prefix!r} + secret"
                             + (f" + {self.suffix!r}" if self.suffix else ""))
        secret = text[len(self.prefix):len(text) - len(self.suffix)]
        if not secret.strip():
            raise UsageError(f"canary text {text[:60]!r} has an empty secret after prefix {self.prefix!r}")
        return secret


def split_from_template(template: str, *, source: str = "template") -> SecretSplit:
    """``"my PIN is {secret}"`` -> prefix ``"my PIN is "``."""
    if template.count("{secret}") != 1:
        raise UsageError(f"secret template must contain '{{secret}}' exactly once, got {template!r}")
    prefix, suffix = template.split("{secret}")
    if not prefix.strip():
        raise UsageError(f"secret template {template!r} has no prefix to prompt the model with")
    return SecretSplit(prefix=prefix, suffix=suffix, source=source)


def infer_split(texts: Sequence[str]) -> SecretSplit | None:
    """The longest common prefix of ``texts`` cut back to a word boundary (None if it is empty).

    Give it the canaries and the candidate secrets together: with many independent secrets their
    common prefix is the template's (a handful of canaries alone may share a first digit)."""
    texts = [str(t) for t in texts]
    if len(texts) < 2:
        return None
    common = os.path.commonprefix(texts)
    cut = max(common.rfind(" "), common.rfind("\t"), common.rfind("\n"))
    prefix = common[:cut + 1] if cut >= 0 else ""
    if not prefix.strip():
        return None
    return SecretSplit(prefix=prefix, source="inferred")


@dataclass(frozen=True)
class ExtractionResult:
    """Per canary: ``greedy_hit`` (bool), ``sampled_hits`` (int in 0..S); and the settings."""

    greedy_hit: np.ndarray
    sampled_hits: np.ndarray
    samples: int
    temperature: float
    top_k: int
    secret_tokens: np.ndarray  # tokens generated per canary (the secret's token count)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def scores(self) -> np.ndarray:
        """(greedy hit + sampled hits) / (S + 1): the fraction of decodings that extract the secret."""
        return (self.greedy_hit.astype(np.float64) + self.sampled_hits) / (self.samples + 1)

    def totals(self, member: np.ndarray) -> dict[str, dict[str, int]]:
        member = np.asarray(member, dtype=bool)
        out = {}
        for name, sel in (("members", member), ("nonmembers", ~member)):
            out[name] = {"canaries": int(sel.sum()), "greedy_extracted": int(self.greedy_hit[sel].sum()),
                         "sampled_extracted_any": int((self.sampled_hits[sel] > 0).sum()),
                         "sampled_hits": int(self.sampled_hits[sel].sum()),
                         "extracted_any": int(((self.sampled_hits > 0) | self.greedy_hit)[sel].sum())}
        return out


def _token_plan(tokenizer: Any, texts: Sequence[str], split: SecretSplit) -> tuple[list[list[int]], list[int], list[str]]:
    """Per canary: the prefix token ids (prefix without its trailing whitespace), the number of
    tokens to generate, and the secret."""
    prompts, n_new, secrets = [], [], []
    for text in texts:
        secret = split.secret_of(text)
        prompt = split.prefix.rstrip()
        p_ids = list(tokenizer(prompt)["input_ids"])
        full = list(tokenizer(split.prefix + secret)["input_ids"])
        if not p_ids or full[:len(p_ids)] != p_ids or len(full) <= len(p_ids):
            raise UsageError(f"extraction: the tokens of prefix {prompt!r} are not a prefix of the tokens of "
                             f"{text[:60]!r}; set [secrets] prefix to a prefix that ends at a token boundary")
        prompts.append(p_ids)
        n_new.append(len(full) - len(p_ids))
        secrets.append(secret)
    return prompts, n_new, secrets


def plan_extraction(model: Any, tokenizer: Any, texts: Sequence[str], *, split: SecretSplit,
                    ) -> tuple[list[list[int]], list[int], list[str]]:
    """Per canary: prompt token ids, tokens to generate, secret. A one-line UsageError when a canary
    does not split, its prefix does not end at a token boundary, or it does not fit the model
    (checked before an audit writes anything)."""
    from dp_audit.attacks._forward import max_input_length

    texts = [str(t) for t in texts]
    if not texts:
        raise UsageError("extraction: no canaries")
    prompts, n_new, secrets = _token_plan(tokenizer, texts, split)
    limit = max_input_length(model, tokenizer)
    too_long = [i for i, (p, k) in enumerate(zip(prompts, n_new)) if len(p) + k > limit]
    if too_long:
        raise UsageError(f"extraction: canary {too_long[0]} needs {len(prompts[too_long[0]]) + n_new[too_long[0]]} "
                         f"positions; the model accepts {limit}")
    return prompts, n_new, secrets


def decode_tokens(model: Any, prompt: Any, *, steps: int, greedy: bool, generator: Any = None,
                  temperature: float = 1.0, top_k: int = 0) -> Any:
    """Continue each row of ``prompt`` (a (B, L) LongTensor, no padding) by ``steps`` tokens;
    returns the (B, steps) new tokens. Sampling draws from ``generator`` only."""
    import torch

    if not greedy and generator is None:
        raise UsageError("sampling needs an explicit torch.Generator (no global RNG)")
    ids = prompt
    out = []
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1, :].float()
        if greedy:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).to(ids.device)
        out.append(nxt)
        ids = torch.cat([ids, nxt], dim=1)
    return torch.cat(out, dim=1) if out else ids[:, :0]


def extraction_check(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    split: SecretSplit,
    samples: int = 16,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> ExtractionResult:
    """Greedy and ``samples`` sampled generations from each canary's prefix (module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from dp_audit.attacks._forward import _device

    if samples < 0 or batch_size < 1 or not temperature > 0 or top_k < 0:
        raise UsageError(f"extraction: need samples >= 0, batch_size >= 1, temperature > 0, top_k >= 0 "
                         f"(got {samples}, {batch_size}, {temperature}, {top_k})")
    prompts, n_new, secrets = plan_extraction(model, tokenizer, texts, split=split)
    target = [normalise(s) for s in secrets]
    n = len(texts)
    greedy_hit = np.zeros(n, dtype=bool)
    sampled_hits = np.zeros(n, dtype=np.int64)
    gen = torch.Generator().manual_seed(int(seed))
    dev = _device(model)
    was_training = model.training
    model.eval()
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    # one job per (canary, decoding); decodings of one canary stay in canary order so that a
    # canary's samples depend on the seed and the order of the canaries only
    jobs = [(i, r) for length in sorted(groups) for i in groups[length] for r in range(samples + 1)]
    per_batch = max(1, batch_size)
    try:
        with torch.inference_mode():
            chunks = [jobs[s:s + per_batch] for s in range(0, len(jobs), per_batch)]
            for chunk in tqdm(chunks, desc="extraction", disable=not progress, leave=False, unit="batch"):
                by_len: dict[tuple[int, bool], list[tuple[int, int]]] = {}
                for i, r in chunk:
                    by_len.setdefault((len(prompts[i]), r == 0), []).append((i, r))
                for (_, greedy), rows in sorted(by_len.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
                    steps = max(n_new[i] for i, _ in rows)
                    prompt = torch.as_tensor([prompts[i] for i, _ in rows], dtype=torch.long, device=dev)
                    new = decode_tokens(model, prompt, steps=steps, greedy=greedy, generator=gen,
                                        temperature=temperature, top_k=top_k).cpu().tolist()
                    for (i, _), toks in zip(rows, new):
                        text = tokenizer.decode(toks[:n_new[i]], skip_special_tokens=True)
                        hit = normalise(text) == target[i]
                        if greedy:
                            greedy_hit[i] = hit
                        else:
                            sampled_hits[i] += int(hit)
    finally:
        model.train(was_training)
    return ExtractionResult(greedy_hit=greedy_hit, sampled_hits=sampled_hits, samples=int(samples),
                            temperature=float(temperature), top_k=int(top_k),
                            secret_tokens=np.asarray(n_new, dtype=np.int64),
                            details={"prefix": split.prefix, "suffix": split.suffix, "split": split.source,
                                     "seed": int(seed)})


def extraction_null_probability(*, decodings: int, space_size: int | float, other_canaries: int = 0) -> float:
    """p_out = (S + 1)/(|R| − n_other): the chance that one of S + 1 decodings reproduces a secret
    drawn uniformly from R independently of the model (a canary that was not trained on).

    ``other_canaries`` = m − 1 keeps it valid when secrets were drawn *without* replacement (user
    canaries with distinct secrets): then a non-member's secret is uniform on R minus the others'
    secrets (≥ |R| − m + 1 values), which the model may reveal; with replacement (dp-audit's own
    canaries) (S + 1)/|R| would do, and the difference is at most a factor |R|/(|R| − m + 1)."""
    effective = float(space_size) - max(0, int(other_canaries))
    if decodings < 1 or not effective > decodings:
        raise UsageError(f"extraction bound: need 1 <= decodings < |R| - (m - 1) (got {decodings}, {space_size}, "
                         f"{other_canaries} other canaries)")
    return float(decodings) / effective


def extraction_epsilon_bound(
    extracted: Sequence[bool] | np.ndarray,
    *,
    member: Sequence[bool] | np.ndarray,
    p_out: float,
    delta: float,
    alpha: float,
    attack: str | None = "extraction",
    threat_model: str = "black-box",
):
    """ε lower bound at confidence 1 − α from how many member canaries were extracted.

    Relation. For a canary not trained on, its secret s is uniform on R and independent of the
    model, so each decoding (a string that does not depend on s) equals s with probability
    <= 1/|R|: P_out[extracted] <= p_out = (S + 1)/|R| (or (S + 1)/(|R| − m + 1), see
    :func:`extraction_null_probability`; secrets of a fixed token count, so that
    the compared string does not depend on s). Adding the canary is one neighbour:
    P_in[extracted] <= e^ε·p_out + δ. This is the exposure relation with exposure k =
    log2(1/p_out) for an extracted canary (0 otherwise), so the Markov-over-members procedure of
    :func:`dp_audit.attacks.exposure.exposure_epsilon_bound` applies unchanged (members share one
    model: no independence is assumed); the estimate is relabelled ``extraction``."""
    from dp_audit.attacks.exposure import exposure_epsilon_bound

    if not 0.0 < p_out < 1.0:
        raise UsageError(f"extraction bound: p_out must be in (0, 1), got {p_out}")
    hit = np.asarray(extracted).astype(bool).ravel()
    k = np.where(hit, -np.log2(p_out), 0.0)
    est = exposure_epsilon_bound(k, member=member, delta=delta, alpha=alpha, attack=attack, threat_model=threat_model)
    mem = np.asarray(member).astype(bool).ravel()
    return dataclasses.replace(
        est, method="extraction", v=int(hit[mem].sum()),
        counts={"extracted_members": int(hit[mem].sum()), "n_members": int(mem.sum()),
                "extracted_nonmembers": int(hit[~mem].sum()), "n_nonmembers": int((~mem).sum()), "p_out": float(p_out)},
        details={"relation": "P[extracted] <= e^eps (S+1)/|R| + delta", "procedure": "Markov over members",
                 "per_j": est.details["per_j"]})
