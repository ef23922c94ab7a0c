"""The shared training path: data, tokenizer, backbone, canaries, and the run directory.

Every trainer receives the same :class:`Prepared` data (the private split with the member
canaries inserted) and returns a :class:`TrainResult`; :func:`train_run` writes the run
directory of DESIGN.md §3. DP is a field of the run (its ledger), not a copy of the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch

from dp_audit.canaries import Canary, make_canaries, write_canaries
from dp_audit.config import RunConfig
from dp_audit.errors import UsageError
from dp_audit.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from dp_audit.lm_canaries import DIGITS
from dp_audit.manifest import inside, new_run_id, write_manifest
from dp_audit.records import PrivacyClaim
from dp_audit.registry import Registry
from dp_audit.rundir import claim_output, staged_output
from dp_audit.trainers.backbone import ensure_backbone, input_layout_of, load_model_tokenizer, model_source
from dp_audit.trainers.data import TaskData, make_task, with_canaries
from dp_audit.trainers.modeling import Batch, InputLayout, build_classifier, encode, predict_losses
from dp_audit.trainers.tokenizer import load_tokenizer, train_tokenizer


@dataclass(frozen=True)
class Prepared:
    cfg: RunConfig
    task: TaskData
    tokenizer: Any
    backbone_dir: Path
    canaries: tuple[Canary, ...]
    train: Batch  # private split + member canaries (each ``repeat`` times)
    dev: Batch
    test: Batch
    public: Batch  # empty (0 rows) without a public split
    layout: InputLayout = InputLayout()  # which inputs the model takes (trainers.modeling.input_layout)
    kind: str = "classifier"  # classifier | causal-lm (batches then carry next-token labels, trainers.causal_lm)
    candidates: tuple[str, ...] = ()  # causal LMs: K candidate secrets for exposure (candidates.txt)
    # causal LMs: the secret's symbols (trainers.secret_alphabet) and the ids of the tokens added
    # to the tokenizer for them (canaries.secret_alphabet = "new-tokens"; the model grows its table)
    alphabet: Any = DIGITS
    new_token_ids: tuple[int, ...] = ()

    @property
    def n_train(self) -> int:
        return int(self.train["input_ids"].shape[0])


@dataclass(frozen=True)
class TrainResult:
    model: Any
    ledger: dict[str, Any]
    claim: PrivacyClaim
    metrics: dict[str, Any] = field(default_factory=dict)  # data-independent or post-processing values only
    extra: dict[str, Any] = field(default_factory=dict)  # trainer-specific manifest entries
    # statistics of the private training data computed without noise (training losses, clipped
    # fractions): released only with privacy.release_training_stats, then listed as unaccounted
    private_metrics: dict[str, Any] = field(default_factory=dict)
    # extra run-directory artifacts (relative path -> bytes), written and hashed with the run
    # (e.g. the Dirac canary record and w_0)
    files: dict[str, bytes] = field(default_factory=dict)


# Names of training-data statistics: if a trainer puts one in ``metrics`` it is treated as a
# private metric all the same (a backstop: such a value is never released unlisted).
PRIVATE_METRIC_KEYS = ("final_train_loss", "clipped_fraction", "train_loss_mean")


def split_metrics(result: TrainResult) -> tuple[dict[str, Any], dict[str, Any]]:
    """(public, private) metrics of a trainer's result: private = ``private_metrics`` plus any
    key of ``metrics`` named in :data:`PRIVATE_METRIC_KEYS`."""
    public = {k: v for k, v in result.metrics.items() if k not in PRIVATE_METRIC_KEYS}
    private = {**{k: v for k, v in result.metrics.items() if k in PRIVATE_METRIC_KEYS}, **result.private_metrics}
    return public, private


def unaccounted_metrics(private: dict[str, Any]) -> list[dict[str, str]]:
    """One ``unaccounted`` entry per released statistic of the private data."""
    return [{"component": f"metric:{k}", "reason": f"metrics.json '{k}' is computed on the private training "
             "split without noise (released because privacy.release_training_stats = true)"} for k in sorted(private)]


# --------------------------------------------------------------------------- DP noise source

NOISE_SOURCES = ("os_entropy", "seeded")


def noise_record(*, reproducible: bool) -> dict[str, Any]:
    """The ledger's ``noise`` entry: where the DP noise came from and whether whoever holds the
    manifest can regenerate it (then the noise protects nothing once the manifest is released)."""
    if reproducible:
        return {"source": "seeded", "replayable": True, "seed_from": "train.seed (manifest.json seeds.train)",
                "batches": "seeded (train.seed + 1): replayable, no amplification by subsampling",
                "warning": "noise replayable: not DP if the manifest is released"}
    return {"source": "os_entropy", "replayable": False, "batches": "os_entropy"}


def noise_seed(train_seed: int, stream: int = 0) -> int:
    """The noise seed of ``privacy.reproducible_noise = true``: a stream derived from train.seed,
    independent of the training generator's (seeded with train.seed + 1); ``stream`` separates the
    DP runs of one training (DP-Flat's selection prefix and its main run)."""
    key = (0x6E6F697365,) if stream == 0 else (0x6E6F697365, int(stream))
    state = np.random.SeedSequence(entropy=int(train_seed), spawn_key=key).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def noise_generator(*, reproducible: bool, train_seed: int, stream: int = 0) -> torch.Generator:
    """The generator of the DP noise. Default: seeded from 63 bits of OS entropy (``secrets``),
    a seed that is never stored or returned. ``reproducible``: :func:`noise_seed` of train.seed
    (and ``stream``, so that two DP runs of one training never share their noise)."""
    seed = noise_seed(train_seed, stream) if reproducible else secrets.randbits(63)
    return torch.Generator().manual_seed(seed)


def sampling_generator(*, reproducible: bool, generator: torch.Generator) -> torch.Generator:
    """The generator of the Poisson batches of a DP run. Amplification by subsampling holds only if
    the adversary does not know which examples each batch holds: batches drawn from ``generator``
    (seeded from train.seed, which the manifest records) are replayable, so by default they come
    from a fresh OS-entropy seed that is never stored. ``reproducible`` (privacy.reproducible_noise,
    tests and replayed audits): ``generator`` itself, as before."""
    return generator if reproducible else torch.Generator().manual_seed(secrets.randbits(63))


class Trainer(Protocol):
    name: str

    def fit(self, prep: Prepared, model: Any, *, generator: torch.Generator) -> TrainResult: ...


TRAINERS: Registry[type] = Registry("trainer")


def seeds_of(cfg: RunConfig) -> dict[str, int]:
    seeds = {"data": cfg.data.seed, "canaries": cfg.canaries.seed, "train": cfg.train.seed,
             "pretrain": cfg.model.pretrain_seed}
    if cfg.canaries.kind == "secret":
        seeds["candidates"] = cfg.canaries.candidate_seed
    return seeds


def canary_token_pool(cfg: RunConfig) -> int:
    """Reserved tokenizer words: only rare-token canaries need them (each word enlarges the
    embedding matrix, whose per-sample gradients dominate the cost of a DP-SGD step)."""
    if cfg.canaries.kind != "rare-token":
        return 0
    return cfg.data.canary_tokens or cfg.canaries.m


def prepare(cfg: RunConfig, *, cache_root: Path, progress: bool = True) -> Prepared:
    if cfg.model.kind == "causal-lm":
        return prepare_causal_lm(cfg, cache_root=cache_root, progress=progress)
    task = make_task(cfg.data)
    check_public_needs(cfg, task)
    source = model_source(cfg.model)  # model.path, or the MiniLM package's folder; None: the tiny backbone
    if source is None:
        backbone_dir = ensure_backbone(
            cfg.model, cfg.data, task,
            train_tokenizer(task.public.texts, vocab_size=cfg.data.vocab_size, max_length=cfg.data.max_length,
                            canary_tokens=canary_token_pool(cfg)),
            cache_root=cache_root, progress=progress,
        )
        tokenizer = load_tokenizer(backbone_dir)
        if cfg.canaries.kind == "rare-token" and cfg.canaries.m > canary_token_pool(cfg):
            raise UsageError(f"canaries.m = {cfg.canaries.m} rare-token canaries need data.canary_tokens >= m")
    else:
        backbone_dir, tokenizer = source, load_model_tokenizer(source)
    canaries = tuple(make_canaries(
        cfg.canaries.kind, cfg.canaries.m, rng=np.random.default_rng(cfg.canaries.seed),
        vocab=task.vocab or tokenizer_words(tokenizer), n_words=cfg.canaries.n_words, n_labels=task.num_labels,
    )) if cfg.canaries.m else ()
    members = [c for c in canaries if c.member] * cfg.canaries.repeat
    private = with_canaries(task.train, [c.text for c in members], [c.label for c in members])
    layout = input_layout_of(backbone_dir)
    enc = lambda s: encode(tokenizer, s.texts, s.labels, max_length=cfg.data.max_length, layout=layout)  # noqa: E731
    return Prepared(cfg=cfg, task=task, tokenizer=tokenizer, backbone_dir=backbone_dir, canaries=canaries,
                    train=enc(private), dev=enc(task.dev), test=enc(task.test), public=enc(task.public),
                    layout=layout)


def prepare_causal_lm(cfg: RunConfig, *, cache_root: Path, progress: bool = True) -> Prepared:
    """The shared path for causal LMs (docs/language-models.md): the generation task (or your
    texts), the tiny GPT-2 pretrained on the public split (cached) or ``model.path``, secret
    canaries (each member inserted ``canaries.repeat`` times) and K candidate secrets drawn from
    an independent stream (``canaries.candidate_seed``)."""
    from dp_audit.lm_canaries import make_secret_canaries, secret_candidates
    from dp_audit.trainers.causal_lm import encode_lm
    from dp_audit.trainers.lm_backbone import ensure_lm_backbone
    from dp_audit.trainers.secret_alphabet import resolve_alphabet
    from dp_audit.trainers.tokenizer import train_lm_tokenizer

    c = cfg.canaries
    task = make_task(cfg.data)
    check_public_needs(cfg, task)
    source = model_source(cfg.model)
    if source is None:
        template_words = c.template.replace("{secret}", " ")
        tok = train_lm_tokenizer(task.public.texts, vocab_size=cfg.data.vocab_size, max_length=cfg.data.max_length,
                                 extra=[template_words])
        backbone_dir = ensure_lm_backbone(cfg.model, cfg.data, task, tok, template=c.template, cache_root=cache_root,
                                          progress=progress)
        tokenizer = load_model_tokenizer(backbone_dir)
    else:
        backbone_dir, tokenizer = source, load_model_tokenizer(source)
    tokenizer.padding_side = "right"
    # after the backbone is loaded: new tokens never touch the cached backbone or its key
    alphabet, new_ids = resolve_alphabet(cfg, tokenizer, [*task.train.texts, *task.dev.texts, *task.test.texts,
                                                          *task.public.texts])
    canaries = tuple(Canary(**d) for d in make_secret_canaries(
        c.m, rng=np.random.default_rng(c.seed), template=c.template, n_digits=c.n_digits,
        alphabet=alphabet)) if c.m else ()
    candidates = tuple(secret_candidates(c.candidates, rng=candidate_rng(c.candidate_seed), template=c.template,
                                         n_digits=c.n_digits, alphabet=alphabet)) if c.m else ()
    check_canary_lengths(tokenizer, [x.text for x in canaries] + list(candidates[:1]), max_length=cfg.data.max_length)
    members = [x for x in canaries if x.member] * c.repeat
    private = with_canaries(task.train, [x.text for x in members], [0] * len(members))
    enc = lambda s: encode_lm(tokenizer, s.texts, max_length=cfg.data.max_length)  # noqa: E731
    return Prepared(cfg=cfg, task=task, tokenizer=tokenizer, backbone_dir=backbone_dir, canaries=canaries,
                    train=enc(private), dev=enc(task.dev), test=enc(task.test), public=enc(task.public),
                    layout=input_layout_of(backbone_dir), kind="causal-lm", candidates=candidates, alphabet=alphabet,
                    new_token_ids=new_ids)


def check_canary_lengths(tokenizer, texts: list[str], *, max_length: int) -> None:
    """A secret canary cut by ``data.max_length`` would be trained and audited without its secret
    (every candidate would score the same): a one-line usage error instead."""
    if not texts:
        return
    longest = max(len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"])
    if longest > max_length:
        raise UsageError(f"data.max_length = {max_length} is shorter than a secret canary ({longest} tokens with "
                         f"the start token): raise data.max_length or shorten canaries.template / n_digits")


def candidate_rng(seed: int) -> np.random.Generator:
    """The generator of the candidate secrets: a stream of ``seed`` with its own spawn key, so it
    is independent of the canaries' generator (``default_rng(canaries.seed)``) even for equal
    seeds (the exposure bound needs candidates i.i.d. and independent of the canaries)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(0x63616E64,)))


def check_public_needs(cfg: RunConfig, task: TaskData) -> None:
    """Without a public split (``data.public`` not given) the tiny backbone cannot be pretrained
    (nor its tokenizer trained) and DP-Flat's public modes have no data: one-line usage errors."""
    if len(task.public):
        return
    if not cfg.model.path and cfg.model.backbone in ("tiny", "tiny-gpt2"):
        raise UsageError("data.public is not given: the tiny backbone (model.backbone = 'tiny') and its tokenizer "
                         "are trained on the public split; give data.public, or model.path = a pretrained folder")
    f = cfg.dpflat
    if cfg.trainer == "dpflat":
        for comp, on, mode in (("sparse", f.sparse and not f.blackbox, f.sparse_mode), ("distill", f.distill,
                                                                                      f.distill_mode)):
            if on and mode == "public":
                raise UsageError(f"dpflat.{comp}_mode = 'public' trains on the public split, but data.public is not "
                                 f"given: give data.public, or use dpflat.{comp}_mode = 'paper' or dpflat.{comp} = false")


def tokenizer_words(tokenizer) -> tuple[str, ...]:
    """Whole alphabetic words of a tokenizer's vocabulary (public: the canaries' words when the
    data has no public split), sorted."""
    return tuple(sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 1))


def new_classifier(prep: Prepared, *, generator: torch.Generator):
    """The run's model: the backbone with a head for the task's labels (a causal LM for
    ``model.kind = "causal-lm"``), with the configured tuning."""
    if prep.kind == "causal-lm":
        from dp_audit.trainers.causal_lm import build_causal_lm

        return build_causal_lm(prep.backbone_dir, prep.cfg.model, generator=generator,
                               pad_token_id=prep.tokenizer.pad_token_id, new_token_ids=prep.new_token_ids)
    return build_classifier(prep.backbone_dir, prep.cfg.model, num_labels=prep.task.num_labels, generator=generator,
                            pad_token_id=prep.tokenizer.pad_token_id)


def default_cache_root(out_dir: Path, cfg: RunConfig) -> Path:
    return Path(cfg.model.cache_dir) if cfg.model.cache_dir else Path(out_dir).resolve().parent / ".cache"


def train_run(cfg: RunConfig, out_dir: str | Path, *, progress: bool = True, overwrite: bool = False,
              inputs: Iterable[str | Path | None] = (), run_id: str | None = None) -> Path:
    """Train with ``cfg.trainer`` and write a complete run directory at ``out_dir``.

    The directory is built in a temporary sibling and renamed into place at the end, so an
    interrupted run never leaves a half-written run directory behind. ``inputs`` (e.g. the config
    file) are files ``--overwrite`` must never remove with the old run. ``run_id``: the manifest's
    run id (default a new one); a caller that records which directories it wrote gives its own.
    """
    import dp_audit.trainers.registry  # noqa: F401  (registers every trainer)

    out_dir = Path(out_dir)
    cache_root = default_cache_root(out_dir, cfg)
    # checked before any work; --overwrite replaces only a dp-audit run that does not hold the cache
    state = claim_output(out_dir, overwrite=overwrite, inputs=[cache_root, *inputs])
    trainer_cls = TRAINERS.get(cfg.trainer)
    prep = prepare(cfg, cache_root=cache_root, progress=progress and cfg.train.progress)
    g_init = torch.Generator().manual_seed(cfg.train.seed)
    model = new_classifier(prep, generator=g_init)
    base_state = _base_for_saving(model, cfg)
    result = release_policy(trainer_cls().fit(prep, model, generator=torch.Generator().manual_seed(cfg.train.seed + 1)),
                            cfg)
    model = result.model
    metrics = {**evaluation_metrics(model, prep), **result.metrics}

    with staged_output(out_dir, state) as tmp:  # nothing is removed if out_dir changed meanwhile
        artifacts = _write_model(tmp, model, base_state, prep, cfg)
        write_canaries(tmp / "canaries.jsonl", prep.canaries)
        if prep.candidates:  # the exposure attack's candidate secrets (dp_audit.audit_attacks.CANDIDATES)
            atomic_write_text(tmp / "candidates.txt", "\n".join(prep.candidates) + "\n")
        atomic_write_json(tmp / "ledger.json", result.ledger)
        atomic_write_json(tmp / "metrics.json", metrics)
        for rel, data in result.files.items():
            atomic_write_bytes(inside(tmp, rel), data)
        write_manifest(
            tmp, kind="train", config=cfg.to_dict(), seeds=seeds_of(cfg), claim=result.claim.to_dict(),
            artifacts=[*artifacts, "canaries.jsonl", *(["candidates.txt"] if prep.candidates else []), "ledger.json",
                       "metrics.json", *result.files],
            run_id=run_id or new_run_id(cfg.name or out_dir.name), data_fingerprint=prep.task.fingerprint,
            extra={"notes": {"trainer": cfg.trainer, "tuning": cfg.model.tuning, "kind": prep.kind, "metrics": metrics,
                             **({"canaries": secret_notes(cfg, alphabet=prep.alphabet)} if prep.kind == "causal-lm"
                                else {}),
                             **({"data": prep.task.source} if prep.task.source else {}), **result.extra}},
        )
    return out_dir


def secret_notes(cfg: RunConfig, *, alphabet: Any = DIGITS) -> dict[str, Any]:
    """The manifest's ``notes.canaries``: the secret canaries' settings and their resolved
    alphabet (the list of symbols; the audit's |R| = len(alphabet)^n_digits)."""
    c = cfg.canaries
    from dp_audit.lm_canaries import secret_space_size

    return {"kind": "secret", "m": c.m, "repeat": c.repeat, "template": c.template, "n_digits": c.n_digits,
            "secret_alphabet": c.secret_alphabet, "alphabet": list(alphabet),
            "secret_space": secret_space_size(n_digits=c.n_digits, alphabet=alphabet), "candidates": c.candidates,
            "candidates_file": "candidates.txt", "seed": c.seed, "candidate_seed": c.candidate_seed,
            "membership": "Bernoulli(1/2) per canary from canaries.seed",
            "candidate_stream": "SeedSequence(candidate_seed, spawn_key=(0x63616E64,)): independent of the canaries"}


def evaluation_metrics(model, prep: Prepared) -> dict[str, float]:
    """Metrics of the final model on the held-out dev and test splits: post-processing of the
    released model, nothing computed on the private training split."""
    if prep.kind == "causal-lm":
        from dp_audit.trainers.causal_lm import lm_evaluation_metrics

        return lm_evaluation_metrics(model, prep)
    out: dict[str, float] = {}
    for name in ("test", "dev"):
        losses, correct = predict_losses(model, getattr(prep, name))
        out[f"{name}_accuracy"] = float(correct.mean()) if correct.size else float("nan")
        out[f"{name}_loss"] = float(losses.mean()) if losses.size else float("nan")
    return out


def release_policy(result: TrainResult, cfg: RunConfig) -> TrainResult:
    """What of a trainer's result is written: statistics of the private data (:func:`split_metrics`)
    are dropped, or with ``privacy.release_training_stats`` released and listed as unaccounted in
    the ledger and the claim."""
    public, private = split_metrics(result)
    if not cfg.privacy.release_training_stats or not private:
        return dataclasses.replace(result, metrics=public, private_metrics={})
    extra = unaccounted_metrics(private)
    ledger = {**result.ledger, "unaccounted": [*(result.ledger.get("unaccounted") or []), *extra]}
    claim = dataclasses.replace(result.claim, unaccounted=[*result.claim.unaccounted, *extra])
    return dataclasses.replace(result, metrics={**public, **private}, private_metrics={}, ledger=ledger, claim=claim)


def _base_for_saving(model, cfg: RunConfig):
    """The weights before fine-tuning: the base of a PEFT adapter, and for full fine-tuning the
    starting point that white-box audits compare the final weights with."""
    base = model if cfg.model.tuning in ("full", "head") else model.get_base_model()
    return {k: v.detach().clone() for k, v in base.state_dict().items()}


def _write_model(run_dir: Path, model, base_state, prep: Prepared, cfg: RunConfig) -> list[str]:
    prep.tokenizer.save_pretrained(run_dir / "tokenizer")
    model.save_pretrained(run_dir / "model")  # full model, or adapter_config.json + adapter_model.safetensors
    if prep.kind == "causal-lm":  # model/ loads on its own (generation, foreign tools)
        prep.tokenizer.save_pretrained(run_dir / "model")
    base = model if cfg.model.tuning in ("full", "head") else model.get_base_model()
    base.save_pretrained(run_dir / "base_model", state_dict=plain_state_dict(base_state))
    return ["model", "base_model", "tokenizer"]


def plain_state_dict(state: dict) -> dict:
    """A PEFT-wrapped base's state with the plain Hugging Face names: ``x.original_module.w`` ->
    ``x.w`` and LoRA's ``x.base_layer.w`` -> ``x.w``; the trained copies
    (``x.modules_to_save.<adapter>.w``) and the LoRA matrices live in the adapter instead."""
    out = {}
    for key, value in state.items():
        if ".modules_to_save." in key or ".lora_" in key:
            continue
        out[key.replace(".original_module.", ".").replace(".base_layer.", ".")] = value
    return out


def claim_for_nonprivate(cfg: RunConfig) -> PrivacyClaim:
    eps = cfg.privacy.claimed_epsilon if cfg.privacy.claimed_epsilon > 0 else math.inf
    return PrivacyClaim(epsilon=eps, delta=cfg.privacy.delta, accountant="declared" if math.isfinite(eps) else "none",
                        unaccounted=[{"component": "training", "reason": "non-private training: no mechanism"}])


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def poisson_steps(n: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Sample rate q = B/n and the number of steps of ``epochs`` epochs (Opacus convention)."""
    q = min(1.0, batch_size / n)
    return q, int(epochs * round(1 / q))


def replace_cfg(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Return ``cfg`` with some fields of some sections replaced (for tests and benchmarks)."""
    changes = {name: dataclasses.replace(getattr(cfg, name), **vals) for name, vals in sections.items()}
    return dataclasses.replace(cfg, **changes)
