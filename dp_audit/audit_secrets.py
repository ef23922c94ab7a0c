"""The secret-canary stage of ``dp-audit run`` for causal LMs (docs/language-models.md "Auditing a
language model"), called from :func:`dp_audit.audit.run_audit`:

- exposure per canary: the sampled-rank exposure (``dp_audit.attacks.exposure``; it alone feeds
  the ε bound) and the skew-normal extrapolation to the full secret space |R|
  (``dp_audit.attacks.exposure_extrapolation``; an estimate);
- the extraction check (``dp_audit.attacks.extraction``): greedy and sampled generations from the
  canary's prefix, written as the attack ``extraction`` (``scores/extraction.npz``) so the gate's
  one-run bounds run on it like on any other canary score.

Everything lands in audit.json's ``secrets`` block (per canary and totals) and, for extraction,
in ``attacks``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dp_audit.errors import UsageError

EXTRACTION = "extraction"
SCORES_FILE = "scores/extraction.npz"
# |R| sources the extraction bound may use: the secret's distribution is known to be uniform on R
# (the run drew the secrets) or asserted by the auditor ([secrets] space_size). A size guessed from
# candidates is not: secrets drawn from a list ("Alice Smith": first names x last names) or with
# per-position alphabets make |alphabet|^n far larger than the true support, and p_out too small.
BOUND_SPACE_SOURCES = ("config", "run config (|alphabet|^n_digits)")


@dataclass(frozen=True)
class SecretsStage:
    attacks: list[Any] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    block: dict[str, Any] | None = None


def _run_canary_config(target: Any) -> dict[str, Any]:
    cfg = (target.manifest.get("config") or {}) if target.source == "dp-audit" else {}
    return cfg.get("canaries") or {}


def run_alphabet(target: Any) -> Any:
    """The secret alphabet of a dp-audit run: the resolved list of symbols the run recorded
    (manifest ``notes.canaries.alphabet``, trainers.secret_alphabet), else a legacy
    ``config.canaries.alphabet`` string of one-character symbols, else the ten digits (runs
    before ``canaries.secret_alphabet`` existed, or with its default); None if the recorded
    alphabet is malformed or the run used a token alphabet without recording it."""
    from dp_audit.lm_canaries import DIGITS, check_alphabet

    notes = ((target.manifest.get("notes") or {}).get("canaries") or {}) if target.source == "dp-audit" else {}
    run_cfg = _run_canary_config(target)
    if "alphabet" in notes:
        alphabet = notes["alphabet"]
    elif "alphabet" in run_cfg:
        alphabet = run_cfg["alphabet"]
    elif run_cfg.get("secret_alphabet", "digits") == "digits":
        alphabet = DIGITS
    else:
        return None
    if not isinstance(alphabet, (str, list)):
        return None
    try:
        check_alphabet(alphabet)
    except UsageError:
        return None
    return alphabet


def resolve_split(target: Any, cfg: Any, candidates: Sequence[str] | None):
    """Where the secret starts in each canary text: ``[secrets] prefix``, else the run's canary
    template, else the common prefix of the canaries and candidates (None if there is none)."""
    from dp_audit.attacks.extraction import SecretSplit, infer_split, split_from_template

    if cfg.secrets.prefix:
        return SecretSplit(prefix=cfg.secrets.prefix, source="given")
    run_cfg = _run_canary_config(target)
    if run_cfg.get("kind") == "secret" and isinstance(run_cfg.get("template"), str):
        return split_from_template(run_cfg["template"])
    return infer_split([c.text for c in target.canaries] + list(candidates or []))


def resolve_space_size(target: Any, cfg: Any, candidates: Sequence[str] | None, split: Any) -> tuple[int | None, str]:
    """|R|: ``[secrets] space_size``, else |alphabet|^n_digits of the run's secret canaries, else
    |alphabet|^n from the candidate secrets when they all have n whitespace-separated symbols (a
    guess: good enough for the extrapolated *estimate*, never for the extraction bound, see
    :data:`BOUND_SPACE_SOURCES`)."""
    if cfg.secrets.space_size:
        return int(cfg.secrets.space_size), "config"
    run_cfg = _run_canary_config(target)
    if run_cfg.get("kind") == "secret" and isinstance(run_cfg.get("n_digits"), int):
        from dp_audit.lm_canaries import secret_space_size

        alphabet = run_alphabet(target)
        if alphabet is None:
            return None, "unknown: the run's canary alphabet is not a list of distinct symbols"
        return secret_space_size(n_digits=int(run_cfg["n_digits"]), alphabet=alphabet), \
            "run config (|alphabet|^n_digits)"
    if not candidates or split is None:
        return None, "unknown: set [secrets] space_size"
    try:
        symbols = [split.secret_of(c).split() for c in candidates]
    except UsageError:
        return None, "unknown: candidates do not match the prefix; set [secrets] space_size"
    lengths = {len(s) for s in symbols}
    alphabet = {x for s in symbols for x in s}
    if len(lengths) != 1 or len(alphabet) < 2:
        return None, "unknown: candidates have secrets of different lengths; set [secrets] space_size"
    return len(alphabet) ** lengths.pop(), "candidates (|alphabet|^length)"


def extraction_requested(cfg: Any, *, kind: str) -> str | None:
    """``"explicit"`` when ``extraction`` is listed, ``"all"`` when ``all`` is, else None."""
    if not cfg.secrets.extraction:
        if EXTRACTION in cfg.attacks:
            raise UsageError("attack 'extraction' is listed but [secrets] extraction = false")
        return None
    if EXTRACTION in cfg.attacks:
        if kind != "causal-lm":
            raise UsageError(f"attack 'extraction' applies to causal-lm models; this model is a {kind}")
        return "explicit"
    return "all" if "all" in cfg.attacks and kind == "causal-lm" else None


def check_before_writing(target: Any, cfg: Any, *, kind: str, candidates: Sequence[str] | None,
                         model: Any = None, tokenizer: Any = None):
    """The split of canaries into prefix and secret, checked before any file is written; None when
    extraction does not run. An explicitly listed ``extraction`` that cannot run is a UsageError;
    with ``all`` it is skipped (and audit.json says why)."""
    mode = extraction_requested(cfg, kind=kind)
    if mode is None:
        return None, None
    split = resolve_split(target, cfg, candidates)
    why = None
    if split is None:
        why = "the canaries share no prefix to prompt with (set [secrets] prefix)"
    else:
        try:
            if tokenizer is not None:
                from dp_audit.attacks.extraction import plan_extraction

                plan_extraction(model, tokenizer, [c.text for c in target.canaries], split=split)
            else:
                for c in target.canaries:
                    split.secret_of(c.text)
        except UsageError as exc:
            why = str(exc)
    if why is not None:
        if mode == "explicit":
            raise UsageError(f"attack 'extraction': {why}")
        return None, why
    return split, None


def expected_unseen_exposure(k: int) -> float:
    """Mean sampled exposure of a secret never seen: log2 N − log2(N!)/N, N = K + 1 (→ 1/ln 2)."""
    n = k + 1
    return math.log2(n) - math.lgamma(n + 1) / math.log(2.0) / n


def _mean(x: np.ndarray | None, sel: np.ndarray) -> float | None:
    if x is None or not sel.any():
        return None
    return float(np.mean(x[sel]))


def run_secrets(target: Any, cfg: Any, *, model: Any, tokenizer: Any, signals: Any, member: np.ndarray,
                split: Any, skipped: str | None, candidates: Sequence[str] | None, run_dir: Path,
                rng: np.random.Generator, progress: bool) -> SecretsStage:
    """Exposure (sampled and extrapolated) and extraction per canary (module docstring)."""
    from dp_audit.attacks.exposure import exposure_from_losses

    member = np.asarray(member, dtype=bool)
    exposure = extrapolated = None
    block: dict[str, Any] = {"prefix": split.prefix if split is not None else None}
    space, space_source = resolve_space_size(target, cfg, candidates, split or resolve_split(target, cfg, candidates))
    block["space_size"], block["space_size_source"] = space, space_source
    if signals.candidate_loss is not None:
        from dp_audit.attacks.exposure_extrapolation import MIN_CANDIDATES, extrapolated_exposure

        k = int(signals.candidate_loss.shape[1])
        exposure = exposure_from_losses(signals.loss, signals.candidate_loss)
        block["exposure"] = {"n_candidates": k, "max_sampled": math.log2(k + 1),
                             "expected_unseen": expected_unseen_exposure(k),
                             "mean_sampled": {"members": _mean(exposure, member), "nonmembers": _mean(exposure, ~member)}}
        if space is not None and k >= MIN_CANDIDATES:
            try:
                extrapolated, fits = extrapolated_exposure(signals.loss, signals.candidate_loss, space_size=space)
            except UsageError as exc:  # e.g. every candidate has the same loss: no fit, no estimate
                block["exposure"]["extrapolation"] = f"not done: {exc}"
            else:
                block["exposure"].update({
                    "max_extrapolated": math.log2(space), "fits": [f.to_dict() for f in fits[:5]], "n_fits": len(fits),
                    "mean_extrapolated": {"members": _mean(extrapolated, member),
                                          "nonmembers": _mean(extrapolated, ~member)}})
        elif space is not None:
            block["exposure"]["extrapolation"] = f"not done: needs at least {MIN_CANDIDATES} candidates"
    attacks, files, extraction = [], [], None
    if split is not None:
        from dp_audit.attacks.extraction import extraction_check
        from dp_audit.attacks.metrics import attack_metrics
        from dp_audit.io import save_npz

        s = cfg.secrets
        extraction = extraction_check(model, tokenizer, [c.text for c in target.canaries], split=split,
                                      samples=s.samples, temperature=s.temperature, top_k=s.top_k, seed=cfg.seed,
                                      batch_size=cfg.batch_size, progress=progress)
        save_npz(Path(run_dir) / SCORES_FILE, scores=extraction.scores, member=member)
        files.append(SCORES_FILE)
        res = attack_metrics(EXTRACTION, extraction.scores, member, scores_file=SCORES_FILE, rng=rng,
                             n_bootstrap=cfg.bootstrap)
        totals = extraction.totals(member)
        details = {"samples": extraction.samples, "temperature": extraction.temperature, "top_k": extraction.top_k,
                   "seed": int(cfg.seed), "score": "(greedy hit + sampled hits) / (samples + 1)", "totals": totals}
        details.update(_extraction_bound(extraction, tokenizer, split, candidates, space, space_source))
        attacks.append(dataclasses.replace(res, details={**res.details, **details}))
        block["extraction"] = {**details, "prefix": split.prefix, "split": split.source}
    elif skipped:
        block["extraction"] = {"skipped": skipped}
    if exposure is None and extraction is None:
        return SecretsStage(attacks=attacks, files=files, block=block if skipped else None)
    rows = []
    for i, c in enumerate(target.canaries):
        row: dict[str, Any] = {"id": c.id, "member": bool(c.member)}
        if exposure is not None:
            row["exposure"] = float(exposure[i])
        if extrapolated is not None:
            row["exposure_extrapolated"] = float(extrapolated[i])
        if extraction is not None:
            row["greedy_hit"] = bool(extraction.greedy_hit[i])
            row["sampled_hits"] = int(extraction.sampled_hits[i])
        rows.append(row)
    block["per_canary"] = rows
    return SecretsStage(attacks=attacks, files=files, block=block)


def _extraction_bound(extraction: Any, tokenizer: Any, split: Any, candidates: Sequence[str] | None,
                      space: int | None, space_source: str) -> dict[str, Any]:
    """``bound = "extraction"`` and ``p_out`` = (S + 1)/(|R| − m + 1) when the extraction bound is valid:
    |R| known and every secret (canaries and candidates) of the same token count, so that the
    compared continuation does not depend on the secret (``dp_audit.attacks.extraction``)."""
    from dp_audit.attacks.extraction import extraction_null_probability

    decodings = extraction.samples + 1
    if space is None:
        return {"bound_note": "no extraction bound: the secret space size |R| is unknown (set [secrets] space_size)"}
    if space_source not in BOUND_SPACE_SOURCES:
        return {"bound_note": f"no extraction bound: |R| = {space} is guessed from the {space_source}; set "
                              "[secrets] space_size if the secrets are uniform on a space of that size"}
    counts = set(int(n) for n in extraction.secret_tokens)
    if candidates:
        prompt_len = len(tokenizer(split.prefix.rstrip())["input_ids"])
        for text in candidates:
            try:
                counts.add(len(tokenizer(split.prefix + split.secret_of(text))["input_ids"]) - prompt_len)
            except UsageError:
                return {"bound_note": "no extraction bound: candidates do not match the canaries' prefix"}
    if len(counts) != 1:
        return {"bound_note": f"no extraction bound: secrets have different token counts {sorted(counts)}"}
    others = len(extraction.secret_tokens) - 1
    if space - others <= decodings:
        return {"bound_note": f"no extraction bound: |R| = {space} is not larger than the {decodings} decodings "
                              f"+ the {others} other canaries"}
    return {"bound": "extraction", "space_size": int(space),
            "p_out": extraction_null_probability(decodings=decodings, space_size=space, other_canaries=others)}
