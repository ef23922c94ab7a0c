"""White-box membership scores for rare-token canaries (DESIGN.md §0 "white-box", §5).

Each rare-token canary (``dp_audit.canaries`` kind ``rare-token``) starts with its own reserved
token that appears nowhere else, so that token's input-embedding row is a per-canary parameter:
under DP-SGD it moves only by the canary's own clipped gradient (when the canary is sampled) plus
the mechanism's noise. With plain SGD (``train.optimizer = "sgd"``, no weight decay) the final row
is ``E_0[t] − lr/B · Σ_t (clip(g_t)[row] · 1[sampled at t] + noise_t[row])``: a linear function
of the released noisy updates. This is the input-space analogue of the Dirac canary of Nasr et
al. 2023 ("Tight Auditing of Differentially Private Machine Learning", USENIX Security,
arXiv 2302.07956), whose score is the canary coordinate of the update.

Scores (higher = more likely member), per canary with row displacement ``Δ = E_T[t] − E_0[t]``:

- ``projection`` (the default, and the one the gate counts): ``⟨Δ, d⟩`` with ``d`` the unit mean of
  the unit descent directions ``−∇_row ℓ(canary)`` at points from the initial weights ``θ_0``
  (``base_model/``) to the final ones, canary rows held at ``θ_0`` (:func:`path_direction`). For a
  non-member the row only holds isotropic noise independent of ``d``, so the score is a centred
  Gaussian of the same scale for every non-member; a member adds its gradient steps along ``d``.
- ``norm``: ``‖Δ‖``, direction-free (a χ-type statistic; weaker when the direction is right,
  robust when it drifts).

Validity: a score may use anything except the membership bits. Both scores are deterministic
functions of the released final weights, the initial weights (drawn before, and independently
of, the membership draw), the tokenizer and the canaries' texts and labels; so they are
post-processing of the mechanism's output and the one-run bounds of Steinke et al. 2023 and
Mahloujifar et al. 2024 hold for them (docs/whitebox.md). The direction is averaged along the
segment θ_0 → θ_T rather than taken at θ_0 alone because a classifier head that turns over during
training can flip the row gradient's direction; in lazy training every point gives θ_0's direction.

This module needs weights, not signals, so it does not follow the ``fit``/``score_samples``
interface of :mod:`dp_audit.attacks.base`; it never imports ``dp_audit.trainers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dp_audit.canaries import CANARY_TOKEN_PREFIX, Canary
from dp_audit.errors import IntegrityError, UsageError

THREAT_MODEL = "white-box"
NAME = "whitebox-rare-token"
STATISTICS = ("projection", "norm")
REFERENCE = "Nasr et al. 2023, arXiv 2302.07956 (Dirac canaries), input-space analogue on embedding rows"


@dataclass(frozen=True)
class WhiteBoxScores:
    """Per-canary white-box scores (higher = more likely member) and how they were made."""

    projection: np.ndarray
    norm: np.ndarray
    token_ids: np.ndarray
    threat_model: str = THREAT_MODEL
    details: dict[str, Any] = field(default_factory=dict)

    def get(self, statistic: str) -> np.ndarray:
        if statistic not in STATISTICS:
            raise UsageError(f"unknown white-box statistic {statistic!r}; known: {', '.join(STATISTICS)}")
        return getattr(self, statistic)


def canary_token_ids(tokenizer, canaries: Sequence[Canary], *, token_prefix: str | None = CANARY_TOKEN_PREFIX) -> np.ndarray:
    """The id of each canary's own reserved token (its first word), checked to be one token,
    not [UNK] nor a special token, to start with ``token_prefix`` (dp-audit's reserved pool;
    None: any word), and to occur in no other canary. That it occurs nowhere in the training
    data is the canary design's promise (the built-in tokenizer reserves these words)."""
    ids: list[int] = []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    for c in canaries:
        first = c.text.split(maxsplit=1)[0] if c.text.strip() else ""
        pieces = tokenizer(first, add_special_tokens=False)["input_ids"]
        if (len(pieces) != 1 or pieces[0] == unk or pieces[0] in special
                or (token_prefix is not None and not first.startswith(token_prefix))):
            raise UsageError(f"canary {c.id!r}: its first word {first!r} is not one reserved token of the "
                             "tokenizer (the white-box audit needs rare-token canaries)")
        ids.append(int(pieces[0]))
    arr = np.asarray(ids, dtype=np.int64)
    if np.unique(arr).size != arr.size:
        raise UsageError("rare-token canaries must each have their own reserved token; some share one")
    own = set(arr.tolist())
    for c, t in zip(canaries, arr):
        rest = tokenizer(c.text.split(maxsplit=1)[1] if " " in c.text.strip() else "", add_special_tokens=False)
        if own.intersection(rest["input_ids"]):
            raise UsageError(f"canary {c.id!r} contains another canary's reserved token after its first word")
    return arr


def _load_weights_only(model_dir: Path):
    import warnings

    from transformers import AutoModelForSequenceClassification

    from dp_audit.hf_compat import quiet_transformers

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"no config.json in {model_dir}")
    quiet_transformers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise IntegrityError(f"cannot load model weights from {model_dir}: {str(exc).splitlines()[0][:200]}") from None
    model.eval()
    return model


def _load_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise UsageError(f"tokenizer directory not found: {tokenizer_dir}")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def own_row_gradients(model, tokenizer, canaries: Sequence[Canary], token_ids: np.ndarray, *,
                      batch_size: int = 64) -> np.ndarray:
    """``∇_row ℓ(canary)`` of each canary's cross-entropy loss with respect to its own embedding
    row, at ``model``'s weights (eval mode). A batch's summed loss gives each canary's gradient
    exactly, because no other text of the batch contains that canary's token."""
    import torch

    emb = model.get_input_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(False)
    emb.requires_grad_(True)
    model.eval()
    max_length = int(min(getattr(tokenizer, "model_max_length", 512) or 512, 512))
    out = np.zeros((len(canaries), emb.shape[1]), dtype=np.float64)
    for s in range(0, len(canaries), batch_size):
        chunk = canaries[s:s + batch_size]
        enc = tokenizer([c.text for c in chunk], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        kw = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        labels = torch.as_tensor([c.label for c in chunk], dtype=torch.long)
        emb.grad = None
        logits = model(**kw).logits.float()
        torch.nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
        rows = torch.as_tensor(token_ids[s:s + len(chunk)])
        out[s:s + len(chunk)] = emb.grad[rows].double().numpy()
    emb.grad = None
    return out


def _unit(rows: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, n, out=np.zeros_like(rows), where=n > 0)


def path_direction(base, final, tokenizer, canaries: Sequence[Canary], token_ids: np.ndarray, *, points: int = 5,
                   batch_size: int = 64) -> np.ndarray:
    """Unit direction per canary: the mean of the unit own-row descent directions
    ``−∇_row ℓ(canary; θ_a)`` at ``points`` weights ``θ_a = (1 − a)·θ_0 + a·θ_T``, a in [0, 1]
    (``points = 1``: the initial weights only), with every canary row held at its initial value.

    Holding the canary rows at θ_0 keeps a non-member's score an exact centred Gaussian: its row
    is never read during training, so no other weight depends on that row's noise, and neither
    does the direction. The path average follows the trajectory when training is not lazy (e.g.
    when the classifier head turns over, the row gradient at θ_0 can point the other way).
    ``base`` is used as scratch space and restored."""
    import torch

    if points < 1:
        raise UsageError(f"path_points must be >= 1, got {points}")
    s0 = {k: v.detach().clone() for k, v in base.state_dict().items()}
    s1 = final.state_dict()
    emb = base.get_input_embeddings().weight
    emb_key = next(n for n, p in base.named_parameters() if p is emb)
    rows = torch.as_tensor(token_ids)
    total = np.zeros((len(canaries), base.get_input_embeddings().weight.shape[1]), dtype=np.float64)
    try:
        for a in np.linspace(0.0, 1.0, points) if points > 1 else [0.0]:
            state = {k: ((1 - a) * v + a * s1[k].to(v.dtype)) if v.is_floating_point() else v for k, v in s0.items()}
            state[emb_key] = state[emb_key].clone()
            state[emb_key][rows] = s0[emb_key][rows]
            base.load_state_dict(state)
            total += _unit(-own_row_gradients(base, tokenizer, canaries, token_ids, batch_size=batch_size))
    finally:
        base.load_state_dict(s0)
    return _unit(total)


def rare_token_audit(model_dir: str | Path, base_dir: str | Path, tokenizer_dir: str | Path,
                     canaries: Sequence[Canary], *, path_points: int = 5, batch_size: int = 64) -> WhiteBoxScores:
    """Both white-box statistics for every canary (see the module docstring)."""
    model_dir, base_dir = Path(model_dir), Path(base_dir)
    for d, what in ((model_dir, "model"), (base_dir, "base model (weights before fine-tuning)")):
        if not d.is_dir():
            raise UsageError(f"{what} directory not found: {d}")
        if (d / "adapter_config.json").is_file():
            raise UsageError(f"{d} is a PEFT adapter: the rare-token white-box audit needs full fine-tuning "
                             "(the embedding rows must be trained)")
    if not canaries:
        raise UsageError("no canaries to score")
    tokenizer = _load_tokenizer(tokenizer_dir)
    token_ids = canary_token_ids(tokenizer, canaries)
    final = _load_weights_only(model_dir)
    base = _load_weights_only(base_dir)
    e_final = final.get_input_embeddings().weight.detach().double().numpy()
    e_base = base.get_input_embeddings().weight.detach().double().numpy()
    if e_final.shape != e_base.shape:
        raise IntegrityError(f"embedding shapes differ between {model_dir} {e_final.shape} and {base_dir} {e_base.shape}")
    if int(token_ids.max()) >= e_final.shape[0]:
        raise IntegrityError(f"canary token id {int(token_ids.max())} is outside the embedding matrix "
                             f"({e_final.shape[0]} rows): tokenizer and model do not match")
    disp = e_final[token_ids] - e_base[token_ids]
    direction = path_direction(base, final, tokenizer, canaries, token_ids, points=path_points, batch_size=batch_size)
    projection = np.einsum("ij,ij->i", disp, direction)
    norm = np.linalg.norm(disp, axis=1)
    details = {
        "reference": REFERENCE,
        "direction": f"mean of the normalised own-row descent directions at {path_points} points from the initial to the "
                     "final weights, canary rows held at their initial values",
        "row_dim": int(e_final.shape[1]),
        "zero_direction_canaries": int((np.abs(direction).sum(axis=1) == 0).sum()),
        "median_abs_projection": float(np.median(np.abs(projection))),
        "median_norm": float(np.median(norm)),
    }
    return WhiteBoxScores(projection=projection, norm=norm, token_ids=token_ids, details=details)


def rare_token_scores(model_dir: str | Path, base_dir: str | Path, tokenizer_dir: str | Path,
                      canaries: Sequence[Canary], *, statistic: str = "projection",
                      path_points: int = 5, batch_size: int = 64) -> np.ndarray:
    """One white-box score per canary (higher = more likely member); ``statistic`` is
    ``projection`` (default) or ``norm``. Threat model: :data:`THREAT_MODEL`."""
    if statistic not in STATISTICS:
        raise UsageError(f"unknown white-box statistic {statistic!r}; known: {', '.join(STATISTICS)}")
    return rare_token_audit(model_dir, base_dir, tokenizer_dir, canaries, path_points=path_points,
                            batch_size=batch_size).get(statistic)


def scores_for_run(run_dir: str | Path, *, statistic: str = "projection") -> tuple[np.ndarray, np.ndarray, WhiteBoxScores]:
    """Scores, membership and details for a run directory written by ``dp-audit train``
    (``model/``, ``base_model/``, ``tokenizer/``, ``canaries.jsonl``)."""
    from dp_audit.canaries import read_canaries

    run_dir = Path(run_dir)
    canaries = read_canaries(run_dir / "canaries.jsonl")
    res = rare_token_audit(run_dir / "model", run_dir / "base_model", run_dir / "tokenizer", canaries)
    member = np.array([c.member for c in canaries], dtype=bool)
    return res.get(statistic), member, res


__all__ = ["THREAT_MODEL", "NAME", "STATISTICS", "WhiteBoxScores", "canary_token_ids", "own_row_gradients",
           "rare_token_audit", "rare_token_scores", "scores_for_run"]
