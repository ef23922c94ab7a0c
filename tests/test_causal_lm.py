"""Causal language models (issue 16, part A): the generation task, the tiny GPT-2 and its cache,
secret canaries with candidates, the LM loss under Opacus, and the trainers' runs audited by
``dp-audit run`` (docs/language-models.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dp_audit.config import DataConfig

GEN = {"task": "generation", "n_public": 400, "n_train": 100, "n_dev": 50, "n_test": 50, "max_length": 20,
       "vocab_size": 200}
LM = {"kind": "causal-lm", "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
      "pretrain_epochs": 3}


@pytest.fixture
def lm_config(cache_dir):
    """A tiny causal-LM RunConfig: ``lm_config(trainer="dpsgd", canaries={...})``."""
    from dp_audit.config import run_config_from_dict
    from tests.conftest import merge

    def make(**sections):
        base = {"data": GEN, "model": {**LM, "cache_dir": str(cache_dir)},
                "canaries": {"kind": "secret", "m": 16, "repeat": 4, "candidates": 50},
                "train": {"epochs": 1, "batch_size": 32, "progress": False, "lr": 2e-3},
                "privacy": {"reproducible_noise": True, "epsilon": 1.0}}
        return run_config_from_dict(merge(base, sections))

    return make


# --------------------------------------------------------------------------- the generation task


def test_generation_task_is_seeded_disjoint_and_domain_shifted():
    """Same seed -> same task, another seed -> another; the four splits are disjoint as texts;
    the public split holds office notes only and the private splits clinic notes only; digits
    occur in both (so secret digits are known tokens). Bugs caught: the global RNG used (tasks
    differ between calls), a split leaking into another (a private text in the public split would
    be pretrained on), no domain shift (public = private frames), labels other than 0."""
    from dp_audit.trainers.data import make_task

    a, b = make_task(DataConfig(**GEN)), make_task(DataConfig(**GEN))
    assert a == b
    c = make_task(DataConfig(**{**GEN, "seed": 1}))
    assert c.train.texts != a.train.texts and c.fingerprint != a.fingerprint
    seen = [set(a.split(s).texts) for s in ("public", "train", "dev", "test")]
    assert sum(map(len, seen)) == len(set().union(*seen)) == 600
    private = a.train.texts + a.dev.texts + a.test.texts
    assert not any(w in t.split() for t in a.public.texts for w in ("patient", "nurse", "mg"))
    assert not any(w in t.split() for t in private for w in ("customer", "order", "door"))
    for texts in (a.public.texts, private):
        assert np.mean([any(ch.isdigit() for ch in t) for t in texts]) > 0.2
    assert set(a.train.labels) == {0}
    assert any("my pin code is" in t for t in a.public.texts)  # the default canary template is public text


def test_lm_tokenizer_splits_digits_and_prepends_bos():
    """Each digit of a secret is one token (written "4 8 1" or "481"), every text starts with
    <|endoftext|>, the template's words are in the vocabulary, and decode gives the text back.
    Bugs caught: digits merged into one token (a secret would be one rare word: exposure and
    extraction would be about a single token), no BOS (the first word never predicted), UNK
    template words."""
    from dp_audit.trainers.data import make_task
    from dp_audit.trainers.tokenizer import train_lm_tokenizer

    task = make_task(DataConfig(**GEN))
    tok = train_lm_tokenizer(task.public.texts, vocab_size=200, max_length=20, extra=["my pin code is  "])
    ids = tok("my pin code is 4 8 1 5 9 2")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + 4 + 6
    assert tok("my pin code is 481592")["input_ids"] == ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "my pin code is 4 8 1 5 9 2"
    digit_ids = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    assert len(digit_ids) == 10 and tok.unk_token_id not in digit_ids


def test_causal_lm_config_checks_and_example():
    """The example config loads as a causal LM with secret canaries; ``backbone = "tiny-gpt2"``
    implies ``kind = "causal-lm"``; combinations that cannot work are one-line usage errors (the
    generation task with a classifier, classifier canaries on a causal LM, DP-Flat without a prefix, ghost
    clipping, a template without {secret}, repeat = 0, tuning = head). Bugs caught: the example drifting from the config
    schema, a causal LM silently trained as a classifier."""
    from pathlib import Path

    from dp_audit.config import load_run_config, run_config_from_dict
    from dp_audit.errors import UsageError

    ex = load_run_config(Path(__file__).resolve().parents[1] / "examples" / "train-lm-dpsgd.toml")
    assert (ex.model.kind, ex.canaries.kind, ex.data.task) == ("causal-lm", "secret", "generation")
    ok = {"data": {"task": "generation"}, "model": {"backbone": "tiny-gpt2"}, "canaries": {"kind": "secret"}}
    assert run_config_from_dict(ok).model.kind == "causal-lm"
    bad = [
        {"data": {"task": "generation"}},
        {**ok, "canaries": {"kind": "mislabelled-random"}},
        {**ok, "trainer": "dpflat"},
        {**ok, "privacy": {"grad_sample_mode": "ghost"}},
        {**ok, "canaries": {"kind": "secret", "template": "my pin code"}},
        {**ok, "data": {"task": "pseudo"}},
        {**ok, "canaries": {"kind": "secret", "repeat": 0}},  # members never inserted, yet labelled members
        {**ok, "model": {"backbone": "tiny-gpt2", "tuning": "head"}},
    ]
    for d in bad:
        with pytest.raises(UsageError):
            run_config_from_dict(d)


# --------------------------------------------------------------------------- the tiny GPT-2 and its cache


def test_lm_backbone_is_cached_reused_and_keyed(tmp_path, monkeypatch):
    """The tiny GPT-2 is pretrained once per key: a second call returns the same directory without
    pretraining; another pretrain_seed or another template gives another directory; the saved
    model is a GPT2LMHeadModel with the tokenizer beside it; pretraining lowers the public loss.
    Bugs caught: the cache ignored (pretraining every run), a key missing a field (a stale model
    served for another config), a half-written cache directory served."""
    from dp_audit.config import ModelConfig
    from dp_audit.trainers import lm_backbone
    from dp_audit.trainers.causal_lm import encode_lm, lm_nll_each
    from dp_audit.trainers.data import make_task
    from dp_audit.trainers.tokenizer import train_lm_tokenizer

    data = DataConfig(**{**GEN, "n_public": 200})
    mcfg = ModelConfig(**{**LM, "pretrain_epochs": 2})
    task = make_task(data)
    tok = train_lm_tokenizer(task.public.texts, vocab_size=200, max_length=20, extra=["my pin code is  "])
    calls = []
    real = lm_backbone.pretrain_clm
    monkeypatch.setattr(lm_backbone, "pretrain_clm", lambda *a, **k: calls.append(1) or real(*a, **k))
    d1 = lm_backbone.ensure_lm_backbone(mcfg, data, task, tok, template="my pin code is {secret}", cache_root=tmp_path,
                                        progress=False)
    d2 = lm_backbone.ensure_lm_backbone(mcfg, data, task, tok, template="my pin code is {secret}", cache_root=tmp_path,
                                        progress=False)
    assert d1 == d2 and len(calls) == 1 and (d1 / ".complete").is_file()
    assert json.loads((d1 / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert (d1 / "tokenizer.json").is_file() and (d1 / "model.safetensors").is_file()
    key = lambda m, t: lm_backbone.lm_backbone_key(m, data, vocab_size=len(tok), template=t)  # noqa: E731
    base = key(mcfg, "my pin code is {secret}")
    assert key(ModelConfig(**{**LM, "pretrain_epochs": 2, "pretrain_seed": 1}), "my pin code is {secret}") != base
    assert key(mcfg, "the code is {secret}") != base
    assert not list(tmp_path.glob(".backbone-*"))  # no temporary directory left behind
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    model = AutoModelForCausalLM.from_pretrained(str(d1), local_files_only=True)
    batch = encode_lm(tok, task.public.texts[:64], max_length=20)
    init = GPT2LMHeadModel(lm_backbone.gpt2_config(mcfg, data, tok))
    lm_backbone.init_gpt2_(init, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(lm_nll_each(model, batch).mean()) < float(lm_nll_each(init, batch).mean()) - 0.5


def test_build_cached_refuses_an_incomplete_cache_and_keeps_a_race_winner(tmp_path):
    """A cache directory without its ``.complete`` mark (a copy interrupted by hand, a mark
    deleted) is an integrity error naming the directory, not served; a builder whose rename loses
    the race to another process's complete copy returns that copy and leaves no temporary
    directory. Bugs caught: an incomplete directory returned as the backbone (it used to be,
    after a useless rebuild), a crash when the rename races another builder."""
    from dp_audit.errors import IntegrityError
    from dp_audit.trainers.backbone import DONE, build_cached

    class Saves:
        def __init__(self, name):
            self.name = name

        def save_pretrained(self, d):
            (Path(d) / self.name).write_text("x")

    from pathlib import Path

    stale = tmp_path / "lm-stale"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    built = []
    with pytest.raises(IntegrityError, match="lm-stale"):
        build_cached(stale, lambda: built.append(1) or Saves("model.safetensors"), Saves("tokenizer.json"))
    assert not built

    target = tmp_path / "lm-race"

    def build_while_another_wins():  # the other process renames its complete copy first
        target.mkdir()
        (target / "model.safetensors").write_text("winner")
        (target / DONE).write_text("ok\n")
        return Saves("model.safetensors")

    assert build_cached(target, build_while_another_wins, Saves("tokenizer.json")) == target
    assert (target / "model.safetensors").read_text() == "winner"
    assert not list(tmp_path.glob(".backbone-*"))


# --------------------------------------------------------------------------- the LM loss


def _tiny_gpt2(vocab: int = 40):
    from transformers import GPT2Config, GPT2LMHeadModel

    from dp_audit.trainers.lm_backbone import init_gpt2_

    cfg = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    model = GPT2LMHeadModel(cfg)
    init_gpt2_(model, generator=torch.Generator().manual_seed(0), std=0.2)
    return model


def _batch(ids: list[list[int]], length: int) -> dict:
    n = len(ids)
    x = torch.zeros((n, length), dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, row in enumerate(ids):
        x[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": x, "attention_mask": mask,
            "position_ids": torch.arange(length).unsqueeze(0).expand(n, -1).contiguous(),
            "labels": x.masked_fill(mask == 0, -100)}


def test_lm_loss_masks_padding_and_matches_the_audit_signal():
    """An example's loss does not change with the padding after it, and equals the audit's
    ``loss`` signal (mean next-token NLL, dp_audit.attacks._forward) computed independently.
    Bugs caught: padding counted in the loss (losses would depend on the batch's longest text),
    an off-by-one shift (predicting the current token), a token-weighted mean across examples."""
    from dp_audit.trainers.causal_lm import lm_nll_each

    model = _tiny_gpt2().eval()
    rows = [[1, 5, 9, 3, 7, 2], [1, 4, 4, 8]]
    with torch.no_grad():
        short = lm_nll_each(model, _batch(rows, 6))
        long = lm_nll_each(model, _batch(rows, 12))
        logp = torch.log_softmax(model(input_ids=torch.tensor([rows[1]])).logits[0], -1)
    assert torch.allclose(short, long, atol=1e-5)
    manual = -np.mean([float(logp[t, rows[1][t + 1]]) for t in range(len(rows[1]) - 1)])
    assert abs(float(short[1]) - manual) < 1e-5


def test_opacus_per_sample_gradients_of_gpt2_match_a_per_example_loop():
    """Opacus 1.6 (hooks; GPT-2's Conv1D goes through its functorch fallback, the tied lm_head /
    word embedding accumulates both uses) gives, for the LM loss, per-sample gradients equal to
    the gradients of each example's own loss. Bugs caught: a token-weighted batch mean (per-sample
    gradients scaled by token counts: clipping would bound the wrong quantity), padding in the
    loss, a tied weight counted once."""
    from opacus import GradSampleModule

    from dp_audit.trainers.causal_lm import lm_loss, lm_nll_each

    model = _tiny_gpt2().train()
    rows = [[1, 5, 9, 3, 7, 2, 6, 6], [1, 4, 4], [1, 8, 2, 2, 9, 11], [1, 3, 3, 3, 3]]
    batch = _batch(rows, 8)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    lm_loss(gsm, batch).backward()
    per_sample = {n: p.grad_sample.detach().clone() for n, p in model.named_parameters()}
    gsm.remove_hooks()
    assert per_sample["transformer.h.0.attn.c_attn.weight"].shape[0] == len(rows)
    for i, row in enumerate(rows):
        model.zero_grad(set_to_none=True)
        lm_nll_each(model, _batch([row], 8)).sum().backward()
        for name, p in model.named_parameters():
            assert torch.allclose(per_sample[name][i], p.grad, atol=1e-6, rtol=1e-4), (name, i)


# --------------------------------------------------------------------------- canaries and runs


def test_secret_canaries_repeated_and_candidates_independent(lm_config, cache_dir):
    """prepare(): m secret canaries with Bernoulli(1/2) membership, each member inserted exactly
    ``repeat`` times into the private split and no non-member at all; K candidates from the
    template, drawn from a stream independent of the canaries even when both seeds are equal.
    Bugs caught: non-members trained on (membership would be meaningless), repeat ignored,
    candidates drawn from the canaries' own generator (the secrets would be among them, and the
    exposure bound would be invalid)."""
    from dp_audit.trainers.base import prepare

    cfg = lm_config(canaries={"m": 40, "repeat": 3, "candidates": 200, "seed": 5, "candidate_seed": 5})
    prep = prepare(cfg, cache_root=cache_dir, progress=False)
    assert prep.kind == "causal-lm" and len(prep.canaries) == 40 and len(prep.candidates) == 200
    members = [c for c in prep.canaries if c.member]
    assert 10 < len(members) < 30
    texts = prep.tokenizer.batch_decode(prep.train["input_ids"], skip_special_tokens=True)
    for c in prep.canaries:
        assert texts.count(c.text) == (3 if c.member else 0)
    assert prep.n_train == 100 + 3 * len(members)
    assert all(t.startswith("my pin code is ") and len(t.split()) == 10 for t in prep.candidates)
    secrets = {c.text for c in prep.canaries}
    assert len(secrets & set(prep.candidates)) <= 1  # 40 × 200 pairs of 10⁶ secrets: overlap ~0.008
    from dp_audit.lm_canaries import make_secret_canaries

    same_stream = make_secret_canaries(200, rng=np.random.default_rng(5))
    assert not {d["text"] for d in same_stream} & set(prep.candidates)
    # drawn from default_rng(candidate_seed), the candidates would be the canaries' own stream
    # shifted by the membership draws: the canaries' digit sequence would occur in theirs verbatim
    digits = lambda texts: "".join(t[len("my pin code is "):].replace(" ", "") for t in texts)  # noqa: E731
    assert digits(c.text for c in prep.canaries)[:24] not in digits(prep.candidates)


def _audit(run_dir, attacks=("loss", "zlib", "mink", "exposure")):
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig

    return run_audit(target_from_run(run_dir), AuditConfig(attacks=tuple(attacks), formats=()), progress=False,
                     render=False)


def test_nondp_run_is_audited_as_a_causal_lm(lm_config, tmp_path):
    """A non-private causal-LM run writes what ``dp-audit run RUN_DIR`` audits as a causal LM:
    model/ (GPT-2 + tokenizer), canaries.jsonl, candidates.txt, manifest (kind, seeds incl. the
    candidates', the canary settings) and a ledger; the audit runs LOSS, zlib, min-k% and exposure
    with the run's K candidates. Bugs caught: the run audited as a classifier (kind lost), no
    candidates.txt (no exposure), candidates not hashed in the manifest, perplexity missing."""
    from dp_audit.manifest import load_manifest
    from dp_audit.trainers.base import train_run

    run = train_run(lm_config(trainer="nondp"), tmp_path / "r", progress=False)
    for rel in ("model/config.json", "model/tokenizer.json", "canaries.jsonl", "candidates.txt", "ledger.json"):
        assert (run / rel).is_file(), rel
    man = load_manifest(run, verify=True)
    assert "candidates.txt" in man["artifacts"] and man["config"]["model"]["kind"] == "causal-lm"
    assert man["seeds"]["candidates"] == 0 and man["notes"]["canaries"]["repeat"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert 1 < metrics["test_perplexity"] < 1000 and math.isfinite(metrics["dev_loss"])
    audit = _audit(run)
    assert audit["model"]["kind"] == "causal-lm"
    names = {a["name"]: a for a in audit["attacks"]}
    assert set(names) == {"loss", "zlib", "mink", "exposure"}
    assert names["exposure"]["details"]["n_candidates"] == 50
    # canaries inserted 4 times: the stored bounds and the ceiling are per example (group privacy),
    # the ceiling below the group's own (a report must not promise what 4-fold canaries cannot give)
    from dp_audit.estimate import epsilon_ceiling

    canary_bounds = [e for e in audit["estimates"] if e["is_bound"] and e["attack"] in names]
    assert canary_bounds and all(e["details"]["group_size"] == 4 for e in canary_bounds)
    group = epsilon_ceiling(16, method="fdp", alpha=0.05 / 4, delta=1e-5)
    assert 0 < audit["ceiling"]["fdp"] < group / 2


def _toml(sections: dict) -> str:
    lines = []
    for name, val in sections.items():
        if not isinstance(val, dict):
            lines.insert(0, f"{name} = {json.dumps(val)}")
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in val.items()]
    return "\n".join(lines) + "\n"


def test_cli_train_of_a_causal_lm_exits_0_and_a_cut_canary_exits_2(cache_dir, tmp_path, capsys):
    """``dp-audit train`` on a causal LM prints the test perplexity and exits 0 (it used to crash
    with exit 4 after training: the summary formatted the classifier's test accuracy, None for an
    LM); ``data.max_length`` shorter than a secret canary is a one-line exit 2 before training
    (it used to train and audit canaries cut before their secret: every candidate scored alike).
    Bugs caught: the CLI summary assuming a classifier, secrets silently truncated."""
    from dp_audit.cli import main

    sections = {"trainer": "nondp", "data": GEN, "model": {**LM, "cache_dir": str(cache_dir)},
                "canaries": {"kind": "secret", "m": 8, "repeat": 1, "candidates": 10},
                "train": {"epochs": 1, "batch_size": 32}}
    cfg = tmp_path / "lm.toml"
    cfg.write_text(_toml(sections))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "test perplexity" in capsys.readouterr().out
    cfg.write_text(_toml({**sections, "data": {**GEN, "max_length": 8}}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "cut"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.max_length = 8" in err[0], err
    assert not (tmp_path / "cut").exists()


@pytest.mark.parametrize("trainer,sections", [
    ("dpsgd", {}),
    ("dpsgd", {"model": {"tuning": "lora"}}),
    ("dpzo", {"dpzo": {"steps": 6}}),
    ("dpzo", {"dpzo": {"steps": 6, "noise": "laplace"}, "model": {"tuning": "prefix", "num_virtual_tokens": 4}}),
    ("dpzo", {"dpzo": {"steps": 6}, "model": {"tuning": "lora"}}),
])
def test_dp_trainers_train_causal_lms_with_a_ledger(lm_config, tmp_path, trainer, sections):
    """DP-SGD (full, LoRA) and DP-ZO (Gaussian full, Laplace prefix, Gaussian LoRA) train the
    tiny GPT-2 a few steps through the shared base: the ledger's event, a finite claim, a model
    that changed and loads back as a causal LM whose loss on the dev split matches the trainer's
    own metric. Bugs caught: the classifier loss used on LM batches (crash or a model that never
    moves), the adapter saved for the wrong PEFT task (reloads as a classifier), the claim not
    from the accountant."""
    from dp_audit.attacks.loading import load_hf_model
    from dp_audit.manifest import load_manifest
    from dp_audit.trainers.base import train_run
    from dp_audit.trainers.causal_lm import encode_lm, lm_nll_each

    run = train_run(lm_config(trainer=trainer, **sections), tmp_path / "r", progress=False)
    ledger = json.loads((run / "ledger.json").read_text())
    mech = ledger["events"][0]["mechanism"]
    assert mech == ("subsampled_laplace" if sections.get("dpzo", {}).get("noise") == "laplace"
                    else "subsampled_gaussian")
    man = load_manifest(run, verify=True)
    assert 0 < float(man["claim"]["epsilon"]) < 1.2
    tuning = sections.get("model", {}).get("tuning", "full")
    base = run / "base_model" if tuning != "full" else None
    model, tok, info = load_hf_model(run / "model", base=base, tokenizer_path=run / "tokenizer")
    assert info["kind"] == "causal-lm"
    before, _, _ = load_hf_model(run / "base_model", kind="causal-lm", tokenizer_path=run / "tokenizer")
    from dp_audit.trainers.data import make_task

    dev = encode_lm(tok, make_task(DataConfig(**GEN)).dev.texts, max_length=20)
    with torch.no_grad():
        loss_after, loss_before = float(lm_nll_each(model, dev).mean()), float(lm_nll_each(before, dev).mean())
    assert loss_after != loss_before
    assert abs(loss_after - json.loads((run / "metrics.json").read_text())["dev_loss"]) < 1e-4


# --------------------------------------------------------------------------- the must-show (issue 16)

MUST = {"canaries": {"m": 32, "repeat": 20, "candidates": 100}, "train": {"epochs": 6, "lr": 5e-3}}


def _exposures(lm_config, cache_dir, trainer, **sections):
    from dp_audit.attacks.exposure import exposure_from_losses
    from dp_audit.attacks.signals import compute_signals
    from dp_audit.trainers.base import TRAINERS, new_classifier, prepare
    import dp_audit.trainers.registry  # noqa: F401

    from tests.conftest import merge

    cfg = lm_config(trainer=trainer, **merge(MUST, sections))
    prep = prepare(cfg, cache_root=cache_dir, progress=False)
    model = new_classifier(prep, generator=torch.Generator().manual_seed(2))
    res = TRAINERS.get(trainer)().fit(prep, model, generator=torch.Generator().manual_seed(3))
    sig = compute_signals(res.model, prep.tokenizer, [c.text for c in prep.canaries], kind="causal-lm",
                          progress=False, candidates=list(prep.candidates))
    member = np.array([c.member for c in prep.canaries])
    return exposure_from_losses(sig.loss, sig.candidate_loss), member


def dp_mean_exposure_bound(eps: float) -> float:
    """E[exposure] of a member under ε-DP: P[exposure ≥ k] ≤ min(1, e^ε 2^−k) (δ ≈ 0) integrates
    to (ε + 1)/ln 2 bits (attacks/exposure.py; 1/ln 2 for a secret never seen, ε = 0)."""
    return (eps + 1) / math.log(2)


def test_nondp_with_repeated_secrets_exposes_members(lm_config, cache_dir):
    """Issue 16's must-show, fast half: a non-private fine-tune with each member secret repeated
    20 times gives members a mean exposure far above what ε = 1 allows a secret inserted once
    ((1+1)/ln 2 = 2.9 bits) and 3+ bits above non-members, whose exposure stays near 1/ln 2. Bugs caught: member canaries
    not inserted (or not repeated), candidates drawn with the canaries' secrets, the loss not
    trained on the text tokens (nothing memorised)."""
    exp, member = _exposures(lm_config, cache_dir, "nondp")
    assert exp[member].mean() > dp_mean_exposure_bound(1.0) + 1.5
    assert exp[member].mean() - exp[~member].mean() > 3.0
    assert exp[~member].mean() < 1 / math.log(2) + 1.0


def test_dpsgd_at_small_epsilon_keeps_exposure_within_its_bound(lm_config, cache_dir):
    """Issue 16's must-show, fast half: DP-SGD at ε = 1 on the same data (secrets repeated 20
    times) keeps the members' mean exposure within (ε+1)/ln 2 plus two standard errors of a mean
    of uniform-rank exposures (sd 1/ln 2). That threshold is the bound for a secret inserted
    *once*; for 20 copies the claim only implies 20-fold group privacy (vacuous here), so this is
    an empirical check with a calibrated threshold, not a consequence of the claim (the gate
    compares per-example bounds, dp_audit.group_privacy). Bugs caught: noise not added or
    clipping skipped for LM batches, per-sample gradients of a token-weighted loss (an example's
    gradient norm not bounded by C)."""
    exp, member = _exposures(lm_config, cache_dir, "dpsgd")
    se = (1 / math.log(2)) / math.sqrt(member.sum())
    assert exp[member].mean() < dp_mean_exposure_bound(1.0) + 2 * se
    assert exp[member].mean() - exp[~member].mean() < 1.5


@pytest.mark.slow
def test_whole_pipeline_nondp_fails_the_gate_and_dpsgd_passes(lm_config, tmp_path):
    """Issue 16's must-show through the CLI: train_run, ``dp-audit run`` (LOSS + exposure with the
    run's candidates) and ``dp-audit gate``. A non-private run with 64 secret canaries, members
    repeated 20 times, that *claims* ε = 0.05 per example fails the gate (exit 1): its canaries
    are groups of 20, so the gate tests the group guarantee (20·0.05 = 1, δ_20 ≈ 3e-4;
    dp_audit.group_privacy), which the memorised secrets refute; its members' exposure is far above
    non-members'. DP-SGD at ε = 1 on the same data passes (exit 0) with every per-example bound
    below its claim. Bugs caught: the run audited as a classifier, candidates missing, the gate
    blind to LM attacks, DP-SGD without noise on LM batches, repeat not passed to the gate."""
    from dp_audit.cli import main
    from dp_audit.trainers.base import train_run

    audit_cfg = tmp_path / "audit.toml"
    audit_cfg.write_text('attacks = ["loss", "exposure"]\nformats = []\n')
    sections = {"canaries": {"m": 64, "repeat": 20, "candidates": 200}, "train": {"epochs": 6, "lr": 5e-3}}
    for trainer, claim, expected in (("nondp", {"claimed_epsilon": 0.05}, 1), ("dpsgd", {}, 0)):
        run = train_run(lm_config(trainer=trainer, privacy=claim, **sections), tmp_path / trainer, progress=False)
        assert main(["run", "--run", str(run), "--config", str(audit_cfg), "--quiet"]) == 0
        audit = json.loads((run / "audit.json").read_text())
        scores = np.load(run / "scores" / "exposure.npz", allow_pickle=False)
        gap = scores["scores"][scores["member"]].mean() - scores["scores"][~scores["member"]].mean()
        if trainer == "nondp":
            assert gap > 3.0
            best = max((e for e in audit["estimates"] if e["is_bound"]), key=lambda e: e["epsilon_lb"])
            assert best["details"]["group_size"] == 20 and best["details"]["group_epsilon_lb"] > 1.0
        else:
            assert gap < 1.5
            assert all(e["epsilon_lb"] <= audit["claim"]["epsilon"] for e in audit["estimates"] if e["is_bound"])
        assert main(["gate", "--run", str(run)]) == expected, audit["verdict"]


# --------------------------------------------------------------------------- DP-Flat on causal LMs


def test_output_distillation_kl_closed_form_and_per_sample_clipping():
    """``dpflat.distill_target = "outputs"``: KL(p_np ‖ p) per example is 0 for identical logits,
    equals the hand-computed mean over the example's predicted tokens (padding masked), and the
    distillation loss ℓ_i + λ·KL_i has Opacus per-sample gradients equal to each example's own
    gradient (so clipping bounds the whole term: no part escapes, unlike weight distillation).
    The teacher forward (prefix swapped to P_np) leaves the weights as they were. Bugs caught: KL
    direction or shift wrong, padding counted, a batch-level KL (examples mixed: per-sample
    clipping would no longer bound one example's influence), the weight not restored."""
    from opacus import GradSampleModule

    from dp_audit.trainers.causal_lm import lm_nll_from_logits
    from dp_audit.trainers.dpflat_distill import OutputDistill, kl_each

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[1, 2, 3, 4, 5], [1, 2, -100, -100, -100]])
    assert torch.allclose(kl_each(s, s, labels), torch.zeros(2), atol=1e-6)
    ps, pt = torch.softmax(s[1, 0], -1), torch.softmax(t[1, 0], -1)
    manual = float((pt * (pt.log() - ps.log())).sum())  # example 1: one predicted token (position 0)
    assert abs(float(kl_each(s, t, labels)[1]) - manual) < 1e-5
    assert float(kl_each(s, t, labels)[0]) > 0

    model = _tiny_gpt2().train()
    weight = model.transformer.h[0].attn.c_attn.weight
    anchor = weight.detach() + 0.3 * torch.randn(weight.shape, generator=g)
    od = OutputDistill(weight=weight, anchor=anchor, lam=0.5)
    rows = [[1, 5, 9, 3, 7, 2], [1, 4, 4], [1, 8, 2, 2, 9, 11]]
    batch = _batch(rows, 6)
    before = weight.detach().clone()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    od.loss_each(gsm, batch, lm_nll_from_logits).mean().backward()
    assert torch.equal(weight.detach(), before)
    per_sample = {n: p.grad_sample.detach().clone() for n, p in model.named_parameters()}
    gsm.remove_hooks()
    for i, row in enumerate(rows):
        model.zero_grad(set_to_none=True)
        od.loss_each(model, _batch([row], 6), lm_nll_from_logits).sum().backward()
        for name, p in model.named_parameters():
            assert torch.allclose(per_sample[name][i], p.grad, atol=1e-6, rtol=1e-4), (name, i)


@pytest.mark.parametrize("modes,unaccounted", [
    ({}, {"awp", "sparse", "distill", "distill-regulariser"}),
    ({"awp_mode": "dpsat", "sparse_mode": "public", "distill_mode": "public", "distill_target": "outputs"}, set()),
    ({"distill_target": "outputs", "sparse": False}, {"awp", "distill"}),
])
def test_dpflat_trains_a_causal_lm_prefix(lm_config, tmp_path, modes, unaccounted):
    """White-box DP-Flat on the tiny GPT-2's prefix: paper mode (AWP from a raw private gradient,
    layer selection on private data, weight distillation to a private teacher), the private
    variants (DP-SAT, public selection, output distillation to a public teacher) and paper-mode
    output distillation. Each trains, releases a prefix adapter that loads back as a causal LM,
    and lists exactly the unaccounted components of its modes. Bugs caught: the classifier loss in
    AWP / the sharpness probe / the teacher on LM batches (crash), output distillation reported
    with the weight regulariser's C+λ entry, a private variant listed as unaccounted."""
    from dp_audit.attacks.loading import load_hf_model
    from dp_audit.trainers.base import train_run

    cfg = lm_config(trainer="dpflat", model={"tuning": "prefix", "num_virtual_tokens": 4},
                    dpflat={"distill_epochs": 1, "sparse_reference_epochs": 1, "awp_micro_batch": 4, **modes})
    run = train_run(cfg, tmp_path / "r", progress=False)
    ledger = json.loads((run / "ledger.json").read_text())
    assert {u["component"] for u in ledger["unaccounted"]} == unaccounted
    model, _, info = load_hf_model(run / "model", base=run / "base_model", tokenizer_path=run / "tokenizer")
    assert info["kind"] == "causal-lm" and info["peft_type"] == "PREFIX_TUNING"
    notes = json.loads((run / "manifest.json").read_text())["notes"]["dpflat"]
    assert notes["distill"]["target"] == modes.get("distill_target", "weights")


def test_model_path_to_a_local_causal_lm(lm_config, cache_dir, tmp_path, monkeypatch):
    """``[model] path`` to a local causal-LM ``save_pretrained`` folder (here a GPT-2 with its own
    tokenizer, copied out of the cache) is fine-tuned instead of the tiny backbone, without
    pretraining anything, and the run is audited as a causal LM. Bugs caught: model.path ignored
    for causal LMs (the tiny GPT-2 rebuilt), the folder loaded as a classifier, a folder without
    safetensors accepted."""
    import shutil

    from dp_audit.errors import UsageError
    from dp_audit.trainers import lm_backbone
    from dp_audit.trainers.base import prepare, train_run

    src = prepare(lm_config(), cache_root=cache_dir, progress=False).backbone_dir
    folder = tmp_path / "my-gpt2"
    shutil.copytree(src, folder)
    calls = []
    real = lm_backbone.pretrain_clm
    monkeypatch.setattr(lm_backbone, "pretrain_clm", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = train_run(lm_config(trainer="nondp", model={"path": str(folder), "cache_dir": str(tmp_path / "c")}),
                    tmp_path / "r", progress=False)
    assert not calls and not (tmp_path / "c").exists()
    assert json.loads((run / "model" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert _audit(run, attacks=("loss", "exposure"))["model"]["kind"] == "causal-lm"
    (folder / "model.safetensors").unlink()
    with pytest.raises(UsageError):
        train_run(lm_config(trainer="nondp", model={"path": str(folder)}), tmp_path / "r2", progress=False)


def test_reference_models_of_a_causal_lm_run(lm_config, tmp_path):
    """Reference (shadow) models of a causal-LM run are trained by the same LM trainer on LM
    batches and scored as causal LMs: ``dp-audit run`` with 2 reference models runs ref-loss and
    offline LiRA on the secret canaries. Bugs caught: reference data encoded as classifier batches
    (a crash in the LM loss), reference signals computed as a classifier's (labels required)."""
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig
    from dp_audit.scale.config import ScaleConfig
    from dp_audit.trainers.base import train_run

    run = train_run(lm_config(trainer="nondp"), tmp_path / "r", progress=False)
    audit = run_audit(target_from_run(run), AuditConfig(attacks=("loss", "ref-loss", "lira-offline"), formats=(),
                                                        reference_models=2, scale=ScaleConfig(workers=1)),
                      progress=False, render=False)
    names = {a["name"] for a in audit["attacks"]}
    assert {"ref-loss", "lira-offline"} <= names and audit["model"]["kind"] == "causal-lm"
    assert len(list((run / "references").glob("ref-*.npz"))) == 2


def test_train_cli_on_a_causal_lm_prints_perplexity_and_exits_0(cache_dir, tmp_path, capsys):
    """`dp-audit train` of a causal LM: its summary line printed the test accuracy, which an LM
    run does not have (None), and a successful training exited 4 ("internal error") after writing
    the run. Caught bug: that crash; also the perplexity missing from the summary."""
    from dp_audit.cli import main
    from tests.test_end_to_end import to_toml

    cfg = {"trainer": "nondp", "data": GEN, "model": {**LM, "cache_dir": str(cache_dir)},
           "canaries": {"kind": "secret", "m": 8, "repeat": 2, "candidates": 20},
           "train": {"epochs": 1, "batch_size": 32, "lr": 2e-3}}
    (tmp_path / "lm.toml").write_text(to_toml(cfg))
    rc = main(["train", "--config", str(tmp_path / "lm.toml"), "--out", str(tmp_path / "run"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "test perplexity:" in out and "test accuracy" not in out
