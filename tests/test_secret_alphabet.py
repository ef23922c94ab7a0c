"""Designed secrets for causal-LM canaries (issue 16): ``canaries.secret_alphabet`` = digits (the
default, unchanged), new-tokens (Panda et al. 2025: tokens added to the vocabulary for the
canaries) or unseen (vocabulary words no split uses); the alphabet recorded in the run and read
back by the audit for |R| (docs/language-models.md "Designed secrets")."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_audit.errors import UsageError
from tests.test_causal_lm import GEN, LM, _audit, _exposures, dp_mean_exposure_bound, lm_config  # noqa: F401

NEW = {"secret_alphabet": "new-tokens", "alphabet_size": 20, "n_digits": 4}


def _split_ids(prep) -> dict[str, torch.Tensor]:
    """Token ids of every split without the canaries (train: the rows before the inserted canaries)."""
    n = len(prep.task.train)
    return {"train": prep.train["input_ids"][:n], "dev": prep.dev["input_ids"], "test": prep.test["input_ids"],
            "public": prep.public["input_ids"]}


def test_secrets_and_candidates_use_only_the_alphabet():
    """make_secret_canaries / secret_candidates with a list of symbols: every secret is n symbols of
    the alphabet and all symbols occur; |R| = |alphabet|^n; a bad alphabet is a UsageError. Bugs
    caught: the alphabet ignored (digits drawn), a multi-character symbol split into characters
    (``"".join`` of a string alphabet), |R| computed from 10 digits."""
    from dp_audit.lm_canaries import make_secret_canaries, secret_candidates, secret_space_size

    alphabet = [f"<|secret{i:03d}|>" for i in range(7)]
    canaries = make_secret_canaries(200, rng=np.random.default_rng(0), template="pin {secret}", n_digits=3,
                                    alphabet=alphabet)
    cands = secret_candidates(300, rng=np.random.default_rng(1), template="pin {secret}", n_digits=3,
                              alphabet=alphabet)
    words = [t[len("pin "):].split(" ") for t in [c["text"] for c in canaries] + cands]
    assert all(len(w) == 3 and set(w) <= set(alphabet) for w in words)
    assert {x for w in words for x in w} == set(alphabet)
    assert secret_space_size(n_digits=3, alphabet=alphabet) == 7 ** 3
    for bad in (["a", "a"], ["a b", "c"], ["x"]):
        with pytest.raises(UsageError):
            make_secret_canaries(2, rng=np.random.default_rng(0), alphabet=bad)


# golden values printed by main (8d8ab9c) for this config: canaries + candidates, the train batch,
# the initial model (scripts: prepare() then new_classifier(generator=manual_seed(0)))
GOLDEN = {"texts": "fd4e72436e211f87593998f3eb4a825dffeb3a885743d8594aaf034cffbbdf2f",
          "train": "448af1e307acf2738894790f81556e3f16a99379af9060005aabbc203933b55f",
          "model": "9e02db317bb66378cf859d971c3e7bb29912ca93e8fcc252a9fadf72aa19b59b"}


def test_digits_default_reproduces_the_canaries_of_main_byte_for_byte(lm_config, cache_dir):
    """The default (secret_alphabet = "digits") gives the canaries, candidates, the tokenised
    training batch and the initial model that main produced before this option existed (hashes
    above), and secret_alphabet = "digits" written out gives the same. Bugs caught: the digits
    alphabet passed as another sequence type that changes the draws, an extra draw from the
    canaries' or the init generator, the embedding table grown without new tokens."""
    from dp_audit.trainers.base import new_classifier, prepare

    for cfg in (lm_config(), lm_config(canaries={"secret_alphabet": "digits", "alphabet_size": 10})):
        prep = prepare(cfg, cache_root=cache_dir, progress=False)
        blob = json.dumps([[c.id, c.text, c.member] for c in prep.canaries] + list(prep.candidates)).encode()
        assert hashlib.sha256(blob).hexdigest() == GOLDEN["texts"]
        train = b"".join(prep.train[k].numpy().tobytes() for k in sorted(prep.train))
        assert hashlib.sha256(train).hexdigest() == GOLDEN["train"]
        model = new_classifier(prep, generator=torch.Generator().manual_seed(0))
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().numpy().tobytes())
        assert h.hexdigest() == GOLDEN["model"]


def test_new_tokens_are_single_fresh_tokens_absent_from_every_split(lm_config, cache_dir):
    """new-tokens: alphabet_size symbols added after the backbone loads: each one token, with an id
    past the backbone's vocabulary, decoded back verbatim; no split (train without the canaries,
    dev, test, public) contains any of them; only the member canaries carry them into training;
    the cached backbone's tokenizer is untouched; the model's table grows to the tokenizer with
    new rows = mean + N(0, 0.02²) from the init generator (seeded: same rows twice). Bugs caught:
    tokens added to the cached backbone (its key and every other run would change), a symbol
    split into pieces by the tokenizer's punctuation rule, new rows left at transformers' global-RNG
    init (not reproducible), the table not resized (index error), non-members inserted."""
    from dp_audit.trainers.backbone import load_model_tokenizer
    from dp_audit.trainers.base import new_classifier, prepare

    prep = prepare(lm_config(canaries=NEW), cache_root=cache_dir, progress=False)
    backbone_vocab = len(load_model_tokenizer(prep.backbone_dir))
    assert len(prep.alphabet) == 20 and len(prep.tokenizer) == backbone_vocab + 20
    assert sorted(prep.new_token_ids) == list(range(backbone_vocab, backbone_vocab + 20))
    for s, i in zip(prep.alphabet, prep.new_token_ids):
        assert prep.tokenizer(f"is {s}", add_special_tokens=False)["input_ids"][-1] == i
        assert prep.tokenizer.decode([i]) == s
    new = torch.as_tensor(prep.new_token_ids)
    for name, ids in _split_ids(prep).items():
        assert not torch.isin(ids, new).any(), name
    canary_rows = prep.train["input_ids"][len(prep.task.train):]
    assert torch.isin(canary_rows, new).sum(1).eq(4).all()
    members = sum(c.member for c in prep.canaries)
    assert canary_rows.shape[0] == 4 * members
    for c in prep.canaries:
        ids = prep.tokenizer(c.text)["input_ids"]
        assert len(ids) == 1 + 4 + 4 and torch.isin(torch.as_tensor(ids[-4:]), new).all()
    m1, m2 = (new_classifier(prep, generator=torch.Generator().manual_seed(0)) for _ in range(2))
    w = m1.get_input_embeddings().weight.detach()
    assert w.shape[0] == len(prep.tokenizer)
    assert torch.equal(w, m2.get_input_embeddings().weight.detach())
    rows = w[backbone_vocab:] - w[:backbone_vocab].mean(0)
    assert 0.015 < float(rows.std()) < 0.025 and abs(float(rows.mean())) < 0.005


def test_opacus_per_sample_gradients_cover_the_grown_embedding_rows(lm_config, cache_dir):
    """Opacus (hooks) on the model with its grown, tied table: the word embedding has a per-sample
    gradient of the grown shape, non-zero on each canary's own secret rows, and equal to that
    example's own gradient (so clipping bounds it). Bugs caught: the new rows held
    in a separate parameter Opacus does not see (no per-sample gradient: never clipped), a tied
    output row counted once."""
    from opacus import GradSampleModule

    from dp_audit.trainers.base import new_classifier, prepare
    from dp_audit.trainers.causal_lm import lm_loss, lm_nll_each

    prep = prepare(lm_config(canaries=NEW), cache_root=cache_dir, progress=False)
    model = new_classifier(prep, generator=torch.Generator().manual_seed(0))
    n = len(prep.task.train)
    batch = {k: v[[0, 1, n, n + 1]] for k, v in prep.train.items()}  # two texts, two canary rows
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    lm_loss(gsm, batch).backward()
    wte = model.get_input_embeddings().weight
    per_sample = wte.grad_sample.detach().clone()
    gsm.remove_hooks()
    assert per_sample.shape == (4, len(prep.tokenizer), wte.shape[1])
    new = list(prep.new_token_ids)
    for i in (2, 3):
        own = [t for t in batch["input_ids"][i].tolist() if t in new]
        assert per_sample[i, own].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    lm_nll_each(model, {k: v[2:3] for k, v in batch.items()}).sum().backward()
    assert torch.allclose(per_sample[2], wte.grad, atol=1e-6, rtol=1e-4)


def test_alphabet_config_errors_are_one_line_usage_errors(lm_config):
    """Exit-2 configs: an unknown alphabet, a digits alphabet of another size, a token alphabet of
    1 symbol, new tokens with a prefix/LoRA adapter or frozen embeddings (their rows would never
    train), the option on non-secret canaries. Bugs caught: any of them accepted silently (an
    audit with canaries that cannot be learned)."""
    cases = [{"canaries": {"secret_alphabet": "emoji"}},
             {"canaries": {"alphabet_size": 5}},
             {"canaries": {"secret_alphabet": "unseen", "alphabet_size": 1}},
             {"canaries": NEW, "model": {"tuning": "prefix"}},
             {"canaries": NEW, "model": {"tuning": "lora"}},
             {"canaries": NEW, "model": {"freeze_embeddings": True}}]
    for sections in cases:
        with pytest.raises(UsageError) as err:
            lm_config(**sections)
        assert "\n" not in str(err.value) and ("alphabet" in str(err.value)), sections
    from dp_audit.config import run_config_from_dict

    with pytest.raises(UsageError, match="secret canaries"):
        run_config_from_dict({"canaries": {"secret_alphabet": "new-tokens"}})


def _gpt2_folder(folder: Path, extra_words: list[str]) -> Path:
    """A model.path folder: a word-level tokenizer of the task's public split plus ``extra_words``
    (in the vocabulary, in no split) and a random tiny GPT-2 of that vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from dp_audit.config import DataConfig
    from dp_audit.trainers.data import make_task
    from dp_audit.trainers.tokenizer import train_lm_tokenizer

    task = make_task(DataConfig(**GEN))
    tok = train_lm_tokenizer(task.public.texts, vocab_size=400, max_length=20,
                             extra=["my pin code is", " ".join(extra_words)])
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=32,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def test_unseen_alphabet_is_the_vocabulary_words_no_split_uses(lm_config, cache_dir, tmp_path):
    """unseen on a model.path tokenizer whose vocabulary has 6 words no split contains: the
    alphabet is exactly those words (alphabet_size = 6), the 3 with the highest ids for 3, each one
    token; the tiny backbone (every word from the public split) has none: a one-line UsageError.
    Bugs caught: a word of some split (e.g. only the public one) chosen, the template's words
    chosen, a non-deterministic order, too few words padded silently."""
    from dp_audit.trainers.base import prepare

    extra = ["zyxwa", "zyxwb", "zyxwc", "zyxwd", "zyxwe", "zyxwf"]
    folder = _gpt2_folder(tmp_path / "gpt2", extra)
    prep = prepare(lm_config(model={"path": str(folder)}, canaries={"secret_alphabet": "unseen", "alphabet_size": 6,
                                                                     "n_digits": 3}),
                   cache_root=cache_dir, progress=False)
    assert sorted(prep.alphabet) == extra and prep.new_token_ids == ()
    ids = {s: prep.tokenizer.convert_tokens_to_ids(s) for s in extra}
    top3 = sorted(extra, key=lambda s: ids[s])[-3:]
    prep3 = prepare(lm_config(model={"path": str(folder)}, canaries={"secret_alphabet": "unseen", "alphabet_size": 3,
                                                                      "n_digits": 3}),
                    cache_root=cache_dir, progress=False)
    assert list(prep3.alphabet) == top3
    for c in prep3.canaries:
        assert set(c.text.split()[-3:]) <= set(top3)
    from dp_audit.trainers.secret_alphabet import unseen_symbols

    seen = torch.as_tensor([ids[s] for s in top3[1:]])  # two of them used by some text: skipped
    got = unseen_symbols(prep3.tokenizer, [seen], size=3, template="my pin code is {secret}")
    assert not set(got) & set(top3[1:]) and top3[0] in got
    with pytest.raises(UsageError, match="unseen"):
        prepare(lm_config(canaries={"secret_alphabet": "unseen", "alphabet_size": 5}), cache_root=cache_dir,
                progress=False)


def test_new_tokens_on_a_model_path_checkpoint_grow_its_table(lm_config, cache_dir, tmp_path):
    """new-tokens with ``model.path`` (a GPT-2 checkpoint with its own tokenizer): the tokens are
    added to its tokenizer, the table grows from its size to the tokenizer's, the checkpoint folder
    is not modified. Bugs caught: the table not resized for a foreign checkpoint (index error at
    the first canary), the tokens written back into the user's folder."""
    from dp_audit.trainers.base import new_classifier, prepare

    folder = _gpt2_folder(tmp_path / "gpt2", ["zyxwa", "zyxwb"])
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    prep = prepare(lm_config(model={"path": str(folder)}, canaries=NEW), cache_root=cache_dir, progress=False)
    model = new_classifier(prep, generator=torch.Generator().manual_seed(0))
    old = json.loads((folder / "config.json").read_text())["vocab_size"]
    assert model.get_input_embeddings().weight.shape[0] == old + 20 == len(prep.tokenizer)
    out = model(input_ids=prep.train["input_ids"][-2:]).logits
    assert out.shape[-1] == old + 20 and torch.isfinite(out).all()
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before


@pytest.fixture(scope="module")
def new_token_run(tmp_path_factory, cache_dir):
    """A short non-private run with new-token secrets (20 symbols, 4 per secret, 16 canaries)."""
    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import train_run

    cfg = run_config_from_dict({"data": GEN, "model": {**LM, "cache_dir": str(cache_dir)},
                                "canaries": {"kind": "secret", "m": 16, "repeat": 4, "candidates": 50, **NEW},
                                "trainer": "nondp", "train": {"epochs": 1, "batch_size": 32, "progress": False}})
    return train_run(cfg, tmp_path_factory.mktemp("newtok") / "r", progress=False)


def test_alphabet_recorded_and_space_size_read_back_by_the_audit(new_token_run):
    """The run records the resolved symbols (manifest notes.canaries.alphabet, secret_space =
    20⁴); candidates.txt draws from them; the saved model/ and tokenizer/ hold the new tokens and
    the grown table; ``dp-audit run`` on the run dir gives |R| = 20⁴ from the run (extraction bound
    valid) with exposure, extraction and LOSS; legacy manifests (no alphabet recorded) read 10^n,
    a token alphabet without its list is unknown. Bugs caught: |R| read as 10^n_digits for a
    token alphabet (p_out and the extrapolation off by orders of magnitude), the tokenizer saved
    before the tokens were added (the audit would split every symbol into [UNK]s), the model saved
    without its grown table."""
    from transformers import AutoTokenizer

    from dp_audit.audit_secrets import resolve_space_size
    from dp_audit.config import AuditConfig
    from dp_audit.manifest import load_manifest

    run = new_token_run
    notes = load_manifest(run, verify=True)["notes"]["canaries"]
    alphabet = notes["alphabet"]
    assert notes["secret_alphabet"] == "new-tokens" and len(alphabet) == 20 and notes["secret_space"] == 20 ** 4
    cands = (run / "candidates.txt").read_text().splitlines()
    assert len(cands) == 50 and all(set(c.split()[-4:]) <= set(alphabet) for c in cands)
    for sub in ("model", "tokenizer"):
        tok = AutoTokenizer.from_pretrained(run / sub)
        assert all(len(tok(s, add_special_tokens=False)["input_ids"]) == 1 for s in alphabet), sub
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["vocab_size"] == len(tok)
    audit = _audit(run, attacks=("loss", "exposure", "extraction"))
    sec = audit["secrets"]
    assert sec["space_size"] == 20 ** 4 and sec["space_size_source"] == "run config (|alphabet|^n_digits)"
    assert sec["extraction"].get("bound") == "extraction"
    assert {a["name"] for a in audit["attacks"]} >= {"loss", "exposure", "extraction"}

    class Target:  # manifests of older runs
        source = "dp-audit"

        def __init__(self, manifest):
            self.manifest = manifest

    legacy = Target({"config": {"canaries": {"kind": "secret", "n_digits": 3}}, "notes": {}})
    assert resolve_space_size(legacy, AuditConfig(), None, None)[0] == 1000
    lost = Target({"config": {"canaries": {"kind": "secret", "n_digits": 3, "secret_alphabet": "new-tokens"}}})
    assert resolve_space_size(lost, AuditConfig(), None, None)[0] is None


def test_the_saved_checkpoint_is_audited_with_its_new_tokens(new_token_run, tmp_path):
    """``dp-audit run --model RUN/model --canaries ... --candidates ...`` (a checkpoint dp-audit did
    not train): the tokenizer saved in model/ encodes each secret symbol as one token and the
    LOSS, exposure and extraction scores equal the run-dir audit's. Bugs caught: model/ saved without the
    added tokens (symbols split, other scores), the embedding table saved at the old size (load
    error)."""
    from dp_audit.cli import main

    run = new_token_run
    out = tmp_path / "ckpt"
    rc = main(["run", "--model", str(run / "model"), "--canaries", str(run / "canaries.jsonl"), "--candidates",
               str(run / "candidates.txt"), "--epsilon", "1", "--delta", "1e-5", "--out", str(out), "--quiet",
               "--no-report", "--set", 'attacks=["loss", "exposure", "extraction"]', "--set", "secrets.samples=4"])
    assert rc == 0
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig, SecretsConfig

    run_audit(target_from_run(run), AuditConfig(attacks=("loss", "exposure", "extraction"), formats=(),
                                                secrets=SecretsConfig(samples=4)), progress=False, render=False)
    for name in ("loss", "exposure", "extraction"):
        a = np.load(out / "scores" / f"{name}.npz", allow_pickle=False)["scores"]
        b = np.load(run / "scores" / f"{name}.npz", allow_pickle=False)["scores"]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# tests/test_causal_lm.py's must-show setting (32 canaries, K = 100, 6 epochs) with new-token
# secrets inserted ONCE: the designed canary is learnt from one copy, and the DP claim then bounds
# each member's exposure directly (no group privacy)
MUST_NEW = {"canaries": {"secret_alphabet": "new-tokens", "alphabet_size": 100, "n_digits": 3, "repeat": 1}}


def test_nondp_memorises_new_token_secrets_inserted_once(lm_config, cache_dir):
    """Non-private fine-tune, new-token secrets (100 symbols, 3 per secret) inserted once: members'
    mean exposure far above what ε = 1 allows ((1+1)/ln 2 = 2.9 bits; measured 6.4) and 3+ bits
    above non-members (2.1). Bugs caught: the new rows frozen or left out of the optimiser (nothing
    learnt on the secret), canaries and candidates drawn from different alphabets, the members
    not inserted."""
    exp, member = _exposures(lm_config, cache_dir, "nondp", **MUST_NEW)
    assert exp[member].mean() > dp_mean_exposure_bound(1.0) + 1.5
    assert exp[member].mean() - exp[~member].mean() > 3.0


def test_dpsgd_at_small_epsilon_keeps_new_token_exposure_within_its_bound(lm_config, cache_dir):
    """DP-SGD at ε = 1, the same once-inserted new-token secrets: the members' mean exposure stays
    within (ε+1)/ln 2 + 2 se (what the claim implies per example, δ ≈ 0; measured 1.5) and not
    above the non-members'. Bugs caught: the grown embedding table escaping per-sample clipping or
    noise (its rows, trained by the canaries alone, would memorise the secrets as in the
    non-private run)."""
    exp, member = _exposures(lm_config, cache_dir, "dpsgd", **MUST_NEW)
    se = (1 / math.log(2)) / math.sqrt(member.sum())
    assert exp[member].mean() < dp_mean_exposure_bound(1.0) + 2 * se
    assert exp[member].mean() - exp[~member].mean() < 1.0
