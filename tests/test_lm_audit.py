"""Auditing causal LMs (issue 16, part B): ``dp-audit run --model`` on a PEFT LoRA adapter of a
tiny GPT-2 (base resolved from ``--base-model`` or the adapter config, offline), with secret
canaries and candidates: every LM attack, exposure (sampled + extrapolated), extraction, their
bounds, the report; clear exit-2 errors; and the must-show null: the exposure of secrets never
seen averages ≈ 1/ln 2 bits on a real tiny LM.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_audit.cli import main
from dp_audit.errors import UsageError
from dp_audit.lm_canaries import make_secret_canaries, secret_candidates
from tests.test_attacks_tiny_models import make_tokenizer, tiny_gpt2
from tests.test_end_to_end import one_line_error

TEMPLATE = "my pin is {secret}"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_lm(model, tok, texts, *, steps: int, lr: float):
    ids = torch.as_tensor([tok(t)["input_ids"] for t in texts])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_exposure_of_unseen_secrets_on_a_real_tiny_lm_averages_one_over_ln2():
    """Must-show (issue 16) on a real model: a tiny GPT-2 fine-tuned on 8 secrets; 800 other
    secrets it never saw, ranked among 1023 candidates through ``compute_signals``: mean sampled
    exposure = log2 N − log2(N!)/N ≈ 1/ln 2 (measured 1.40 ± 0.05 vs 1.437) and mean extrapolated
    exposure ≈ 1/ln 2 (1.41 ± 0.05). The tie rule is tested on synthetic losses
    (tests/test_exposure_extrapolation.py): 6-digit secrets have no ties here. Bugs caught: an off-by-one rank (rank 0: infinite exposure),
    natural log instead of log2 (mean 1.0), candidates scored under another model or template."""
    from dp_audit.attacks.exposure import exposure_from_losses
    from dp_audit.attacks.exposure_extrapolation import extrapolated_exposure
    from dp_audit.attacks.signals import compute_signals
    from dp_audit.audit_secrets import expected_unseen_exposure

    tok = make_tokenizer(bert_style=False)
    seen = [c["text"] for c in make_secret_canaries(8, rng=np.random.default_rng(9), template=TEMPLATE)]
    lm = train_lm(tiny_gpt2(seed=0), tok, seen, steps=100, lr=1e-2)
    unseen = [c["text"] for c in make_secret_canaries(800, rng=np.random.default_rng(1), template=TEMPLATE)]
    cand = secret_candidates(1023, rng=np.random.default_rng(2), template=TEMPLATE)
    sig = compute_signals(lm, tok, unseen, kind="causal-lm", candidates=cand, progress=False)
    e = exposure_from_losses(sig.loss, sig.candidate_loss)
    x, _ = extrapolated_exposure(sig.loss, sig.candidate_loss, space_size=10**6)
    for v, target in ((e, expected_unseen_exposure(1023)), (x, 1 / math.log(2))):
        # the canaries share one candidate set (and one fit): their exposures are dependent through
        # it, which adds about var/(K + 1) to the variance of the mean
        se = v.std(ddof=1) * math.sqrt(1 / v.size + 1 / 1024)
        assert abs(v.mean() - target) < 4 * se, (v.mean(), target, se)
    assert abs(expected_unseen_exposure(1023) - 1 / math.log(2)) < 0.01


M = 40


@pytest.fixture(scope="module")
def lora_lm(tmp_path_factory):
    """A tiny GPT-2 base (saved with its tokenizer) and a LoRA adapter trained on the member
    secret canaries; canaries and 2047 candidates drawn like the secrets."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lm")
    tok = make_tokenizer(bert_style=False)
    tiny_gpt2(seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    secrets = make_secret_canaries(M, rng=np.random.default_rng(3), template=TEMPLATE)
    write_jsonl(root / "secrets.jsonl", secrets)
    (root / "candidates.txt").write_text("\n".join(secret_candidates(2047, rng=np.random.default_rng(4),
                                                                     template=TEMPLATE)) + "\n")
    base = AutoModelForCausalLM.from_pretrained(str(root / "base"))  # name_or_path = the base directory
    lora = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0,
                                           target_modules=["c_attn", "c_proj", "c_fc"]))
    g = torch.Generator().manual_seed(5)  # PEFT draws lora_A from the global RNG: redraw it, seeded
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_A" in name:
                p.normal_(0.0, 0.05, generator=g)
    members = [s["text"] for s in secrets if s["member"]]
    train_lm(lora, tok, members * 2, steps=150, lr=2e-2).save_pretrained(root / "adapter")
    return root


def run_lm(root: Path, out: str, *extra: str, model: str = "adapter", eps: float = 1.0, render: bool = False) -> int:
    return main(["run", "--model", str(root / model), "--canaries", str(root / "secrets.jsonl"),
                 "--candidates", str(root / "candidates.txt"), "--epsilon", str(eps), "--delta", "1e-5",
                 "--out", str(root / out), "--quiet", "--overwrite", "--set", 'attacks=["all"]',
                 "--set", "secrets.samples=8", *(() if render else ("--no-report",)), *extra])


def test_default_attacks_of_a_causal_lm_are_every_lm_attack(lora_lm):
    """Issue 16: ``dp-audit run`` on a language model with the default config ran the loss attack
    only, so a team auditing its LM saw neither exposure nor extraction unless it knew to ask. The
    default (``attacks = ["auto"]``) is now "all" for a causal LM and "loss" for a classifier,
    recorded resolved in audit.json. Bugs caught: "auto" left unresolved (UsageError: unknown
    attack) or resolved to ["loss"] for LMs; the config recording "auto" instead of what ran;
    "auto" accepted next to other names or an empty list accepted (both ambiguous)."""
    from dp_audit.audit_attacks import default_attacks
    from dp_audit.config import AuditConfig

    assert AuditConfig().attacks == ("auto",) and default_attacks("classifier") == ("loss",)
    for bad in ((), ("auto", "loss")):
        with pytest.raises(UsageError, match="attacks must be"):
            AuditConfig(attacks=bad)
    assert main(["run", "--model", str(lora_lm / "adapter"), "--canaries", str(lora_lm / "secrets.jsonl"),
                 "--candidates", str(lora_lm / "candidates.txt"), "--epsilon", "1", "--delta", "1e-5",
                 "--out", str(lora_lm / "auto"), "--quiet", "--no-report", "--set", "secrets.samples=2",
                 "--set", "secrets.space_size=1000000", "--set", "bootstrap=0"]) == 0
    audit = json.loads((lora_lm / "auto" / "audit.json").read_text())
    assert [a["name"] for a in audit["attacks"]] == ["loss", "zlib", "mink", "minkpp", "exposure", "extraction"]
    assert audit["audit_config"]["attacks"] == ["all"]


def test_lora_adapter_audit_runs_every_lm_attack_exposure_and_extraction(lora_lm):
    """``--model adapter --base-model base``: base + LoRA loaded from safetensors, every LM attack,
    the sampled and extrapolated exposure per canary, extraction counts per canary and in total,
    the exposure and extraction bounds in the gate, and the report shows them. Bugs caught: the
    adapter not applied (members not exposed: AUC ≈ 0.5), per-canary rows out of canary order,
    extraction bound missing from the gate's tests (n_tests), report without the secrets section."""
    # bootstrap=20: the CIs are reported only (no bound uses them); 200 cost half of this test
    assert run_lm(lora_lm, "audit", "--base-model", str(lora_lm / "base"), "--set", "secrets.space_size=1000000",
                  "--set", "bootstrap=20", render=True) == 0
    out = lora_lm / "audit"
    audit = json.loads((out / "audit.json").read_text())
    assert audit["model"]["kind"] == "causal-lm" and audit["model"]["adapter"] == "LORA"
    assert Path(audit["model"]["base"]).resolve() == (lora_lm / "base").resolve()
    assert "--base-model" in audit["reproduce"] and "--candidates candidates.txt" in audit["reproduce"]
    names = [a["name"] for a in audit["attacks"]]
    assert names == ["loss", "zlib", "mink", "minkpp", "exposure", "extraction"]
    exp = next(a for a in audit["attacks"] if a["name"] == "exposure")
    assert exp["auc"] > 0.9 and exp["details"]["n_bootstrap"] == 20 and audit["audit_config"]["bootstrap"] == 20
    sec = audit["secrets"]
    assert sec["prefix"] == "my pin is " and sec["space_size"] == 10**6
    rows = sec["per_canary"]
    canaries = [json.loads(ln) for ln in (lora_lm / "secrets.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [c["id"] for c in canaries]
    assert all({"exposure", "exposure_extrapolated", "greedy_hit", "sampled_hits"} <= set(r) for r in rows)
    scores = np.load(out / "scores" / "exposure.npz")["scores"]
    np.testing.assert_allclose([r["exposure"] for r in rows], scores)
    mem = np.array([r["member"] for r in rows])
    extra = np.array([r["exposure_extrapolated"] for r in rows])
    assert extra[mem].mean() > 8 > extra[~mem].mean()  # members far in the tail, non-members ≈ 1/ln 2
    tot = sec["extraction"]["totals"]
    assert tot["members"]["extracted_any"] >= 1 and tot["nonmembers"]["extracted_any"] == 0
    assert tot["members"]["canaries"] + tot["nonmembers"]["canaries"] == M
    methods = {(e["method"], e["attack"]) for e in audit["estimates"]}
    assert {("exposure", "exposure"), ("extraction", "extraction"), ("fdp", "extraction")} <= methods
    assert audit["verdict"]["n_tests"] == 6 + 2
    ext = next(e for e in audit["estimates"] if e["method"] == "extraction")
    assert ext["counts"]["p_out"] == pytest.approx(9 / (10**6 - (M - 1))) and ext["epsilon_lb"] > 1.0
    assert main(["gate", "--run", str(out)]) == 1  # ε = 1 is refuted
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for text in (html, md):
        assert "Secret canaries" in text and "extrapolated" in text and "extraction" in text.lower()
    from dp_audit.reports.pdf import _detail_lines
    from dp_audit.reports.viewmodel import build_view

    view = build_view(out)
    assert view.secrets is not None and len(view.secrets.rows) == M
    assert [e.method for e in view.secrets.bounds] == ["fdp", "exposure", "fdp", "extraction"]
    pdf_text = " ".join(str(t) for _, t in _detail_lines(view))
    assert "Secret canaries" in pdf_text and "extrapolated" in pdf_text


def test_adapter_base_resolved_from_the_adapter_config(lora_lm):
    """Without --base-model the base is the adapter config's base_model_name_or_path (a local
    directory). Bug caught: a base found only through --base (exit 2 on a valid adapter)."""
    cfg = json.loads((lora_lm / "adapter" / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]).resolve() == (lora_lm / "base").resolve()
    assert run_lm(lora_lm, "audit-auto", "--set", "secrets.extraction=false", "--set",
                  'attacks=["loss", "exposure"]') == 0
    audit = json.loads((lora_lm / "audit-auto" / "audit.json").read_text())
    assert [a["name"] for a in audit["attacks"]] == ["loss", "exposure"]
    assert "extraction" not in audit["secrets"] and "exposure_extrapolated" in audit["secrets"]["per_canary"][0]


def test_missing_base_is_exit_2_before_anything_is_written(lora_lm, tmp_path, capsys):
    """An adapter whose base is neither given nor a local directory: one line, exit 2, no --out.
    Bug caught: the error surfacing only at load time, after the run directory was created."""
    shutil.copytree(lora_lm / "adapter", tmp_path / "adapter")
    cfg_file = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = "gpt2-that-is-not-here"
    cfg_file.write_text(json.dumps(cfg))
    for f in ("secrets.jsonl", "candidates.txt"):
        shutil.copy(lora_lm / f, tmp_path / f)
    err = one_line_error(capsys, 2, run_lm(tmp_path, "out"))
    assert "base model" in err and "--base-model" in err
    assert not (tmp_path / "out").exists()


def test_pickle_only_adapter_is_exit_2(lora_lm, tmp_path, capsys):
    """An adapter with adapter_model.bin only (a pickle): refused, one line, exit 2. Bug caught:
    PEFT falling back to torch.load of the .bin."""
    (tmp_path / "adapter").mkdir()
    shutil.copy(lora_lm / "adapter" / "adapter_config.json", tmp_path / "adapter" / "adapter_config.json")
    (tmp_path / "adapter" / "adapter_model.bin").write_bytes(b"not really a pickle")
    for f in ("secrets.jsonl", "candidates.txt"):
        shutil.copy(lora_lm / f, tmp_path / f)
    err = one_line_error(capsys, 2, run_lm(tmp_path, "out", "--base-model", str(lora_lm / "base")))
    assert "pickle" in err


def test_wrong_kind_is_exit_2(lora_lm, tmp_path, capsys):
    """--kind classifier on a causal-LM adapter, and an adapter task_type that is neither
    CAUSAL_LM nor SEQ_CLS: one line, exit 2. Bug caught: the causal LM loaded as a sequence
    classifier with a random head (exit 3 'weights missing', or worse, a meaningless audit)."""
    err = one_line_error(capsys, 2, run_lm(lora_lm, "audit-kind", "--kind", "classifier"))
    assert "causal-lm" in err and "classifier" in err
    shutil.copytree(lora_lm / "adapter", tmp_path / "adapter")
    cfg_file = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["task_type"] = "SEQ_2_SEQ_LM"
    cfg_file.write_text(json.dumps(cfg))
    for f in ("secrets.jsonl", "candidates.txt"):
        shutil.copy(lora_lm / f, tmp_path / f)
    err = one_line_error(capsys, 2, run_lm(tmp_path, "out"))
    assert "SEQ_2_SEQ_LM" in err


def test_explicit_extraction_without_a_prefix_is_exit_2(lora_lm, tmp_path, capsys):
    """attacks = ["extraction"] on canaries that share no prefix: one line, exit 2, before the audit
    writes anything. Bug caught: extraction silently skipped when asked for by name."""
    rows = [{"id": f"c{i}", "text": t, "label": 0, "member": i % 2 == 0}
            for i, t in enumerate(["the cat sat on mat", "red fish runs fast", "big dog sat on car", "a tree is green"])]
    write_jsonl(tmp_path / "c.jsonl", rows)
    code = main(["run", "--model", str(lora_lm / "adapter"), "--canaries", str(tmp_path / "c.jsonl"), "--epsilon", "1",
                 "--delta", "1e-5", "--out", str(tmp_path / "out"), "--quiet", "--no-report",
                 "--set", 'attacks=["loss", "extraction"]'])
    err = one_line_error(capsys, 2, code)
    assert "extraction" in err and "prefix" in err
    assert not (tmp_path / "out" / "audit.json").exists()


def test_prefix_and_secret_space_come_from_the_run_then_config_then_candidates():
    """Where the prefix and |R| come from: a dp-audit run's canaries.template / n_digits first
    (lm16a's run directories), then [secrets], then the candidates. Bugs caught: a run's template
    ignored in favour of a guessed common prefix ("my pin is 4 " when every canary starts with 4),
    |R| guessed from candidates that do not all have the same length (no bound must follow)."""
    from types import SimpleNamespace

    from dp_audit.audit_secrets import resolve_space_size, resolve_split
    from dp_audit.canaries import Canary
    from dp_audit.config import AuditConfig, from_mapping

    cans = tuple(Canary(id=f"c{i}", text=f"my pin is 4 {i} 1", label=0, member=i % 2 == 0) for i in range(4))
    run = SimpleNamespace(source="dp-audit", canaries=cans,
                          manifest={"config": {"canaries": {"kind": "secret", "template": "my pin is {secret}",
                                                            "n_digits": 3}}})
    ext = SimpleNamespace(source="external", canaries=cans, manifest={"config": {}})
    cfg = AuditConfig()
    split = resolve_split(run, cfg, None)
    assert split.prefix == "my pin is " and split.source == "template"
    assert resolve_space_size(run, cfg, None, split) == (1000, "run config (|alphabet|^n_digits)")
    assert resolve_split(ext, cfg, None).prefix == "my pin is 4 "  # canaries alone: a guess
    cands = ["my pin is 0 0 0", "my pin is 9 5 1", "my pin is 3 3 7"]
    assert resolve_split(ext, cfg, cands).prefix == "my pin is "
    assert resolve_space_size(ext, cfg, cands, resolve_split(ext, cfg, cands))[0] == 6 ** 3  # the 6 symbols seen
    given = from_mapping(AuditConfig, {"secrets": {"prefix": "my pin is ", "space_size": 1000}})
    assert resolve_space_size(ext, given, cands, resolve_split(ext, given, cands))[0] == 1000
    assert resolve_space_size(ext, cfg, cands + ["my pin is 1 2"], resolve_split(ext, cfg, cands))[0] is None


def test_gate_refuses_an_extraction_bound_without_a_valid_p_out():
    """audit.json is evidence: an extraction entry claiming the bound with p_out outside (0, 1) is
    an integrity error (exit 3), not a silently huge ε. Bug caught: p_out read without checks."""
    from dp_audit.errors import IntegrityError
    from dp_audit.gate import extraction_p_out

    assert extraction_p_out({"details": {"bound": "extraction", "p_out": 1.7e-5}}, "extraction") == 1.7e-5
    assert extraction_p_out({"details": {"samples": 16}}, "extraction") is None
    for bad in (0.0, 1.0, -1e-5, "1e-5", True, None):
        with pytest.raises(IntegrityError):
            extraction_p_out({"details": {"bound": "extraction", "p_out": bad}}, "extraction")


def test_prefix_off_a_token_boundary_is_exit_2_before_the_audit_starts(lora_lm, tmp_path, capsys):
    """[secrets] prefix = "my pin i" cuts a token: the extraction plan is checked right after the
    model loads, before any audit output. Bug caught: the error raised half-way through the audit,
    leaving a run marked pending."""
    code = run_lm(lora_lm, "audit-cut", "--set", 'secrets.prefix="my pin i"', "--set",
                  'attacks=["loss", "extraction"]')
    err = one_line_error(capsys, 2, code)
    assert "token boundary" in err
    out = lora_lm / "audit-cut"
    assert not (out / "audit.json").exists() and not (out / "scores").exists()


def test_extraction_bound_needs_a_known_secret_space_not_one_guessed_from_candidates():
    """Review fix: |R| guessed from the candidates as |alphabet|^length is not the support of the
    secrets when positions have their own alphabets: names "ann lee" drawn from 3 first x 3 last
    names have |R| = 9, but the guess is 6^2 = 36, so p_out = (S+1)/36 would be 4x too small and
    the bound anti-conservative. The guess may feed the extrapolated estimate, never the bound;
    [secrets] space_size (the auditor's assertion) or the run's own alphabet does. Bugs caught:
    the candidate guess feeding p_out; a run whose canaries.alphabet is "01" read as 10^n_digits
    (p_out 125x too small at n = 3)."""
    from types import SimpleNamespace

    from dp_audit.audit_secrets import _extraction_bound, resolve_space_size, resolve_split
    from dp_audit.canaries import Canary
    from dp_audit.config import AuditConfig, from_mapping

    first, last = ("ann", "bob", "cy"), ("lee", "ng", "ho")
    names = [f"{f} {g}" for f in first for g in last]
    cans = tuple(Canary(id=f"c{i}", text=f"my name is {names[i]}", label=0, member=i % 2 == 0) for i in range(4))
    cands = [f"my name is {n}" for n in names * 3]
    ext = SimpleNamespace(source="external", canaries=cans, manifest={"config": {}})
    cfg = AuditConfig()
    split = resolve_split(ext, cfg, cands)
    space, source = resolve_space_size(ext, cfg, cands, split)
    assert split.prefix == "my name is " and space == 36 > len(names)  # the guess overshoots |R| = 9
    tok = make_tokenizer(bert_style=False)
    n_tok = len(tok("my name is ann lee")["input_ids"]) - len(tok("my name is")["input_ids"])
    extraction = SimpleNamespace(samples=1, secret_tokens=np.full(len(cans), n_tok))
    out = _extraction_bound(extraction, tok, split, cands, space, source)
    assert "bound" not in out and "space_size" in out["bound_note"]
    given = from_mapping(AuditConfig, {"secrets": {"space_size": 9}})
    space, source = resolve_space_size(ext, given, cands, split)
    out = _extraction_bound(extraction, tok, split, cands, space, source)
    assert out["bound"] == "extraction" and out["p_out"] == pytest.approx(2 / (9 - 3))  # 3 other canaries
    run = SimpleNamespace(source="dp-audit", canaries=cans, manifest={"config": {"canaries": {
        "kind": "secret", "template": "my pin is {secret}", "n_digits": 3, "alphabet": "01"}}})
    assert resolve_space_size(run, cfg, None, None)[0] == 8


def test_the_base_model_of_an_adapter_is_hashed_and_checked_on_re_audit(lora_lm, tmp_path):
    """Review fix: ``run --model adapter --base-model base --out X`` recorded the sha256 of the
    adapter's files only, so a re-audit (``run --run X``) of an adapter whose base weights were
    swapped audited another model without a word. Now the base's files are in the manifest's
    ``source.base_files`` and checked (exit 3 when they changed). Bug caught: base not hashed, or
    hashed but not verified."""
    from dp_audit.audit import target_from_checkpoint, target_from_run
    from dp_audit.errors import IntegrityError

    shutil.copytree(lora_lm / "base", tmp_path / "base")
    out = tmp_path / "X"
    target_from_checkpoint(model=lora_lm / "adapter", base=tmp_path / "base", canaries=lora_lm / "secrets.jsonl",
                           epsilon=1.0, delta=1e-5, out=out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model.safetensors" in manifest["source"]["base_files"]
    assert target_from_run(out).base_path.resolve() == (tmp_path / "base").resolve()
    (tmp_path / "base" / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(IntegrityError, match="base model"):
        target_from_run(out)


def test_candidates_keep_their_spaces(tmp_path):
    """Review fix: candidate lines were .strip()-ed, so a template with a leading space
    (" my pin is {secret}", as a continuation of a sentence) gave candidates without it: every
    candidate's loss shifts against the canaries', the rank is no longer uniform for unseen secrets
    and the exposure bound's null breaks. Bug caught: whitespace stripped from candidate texts
    (blank lines are still skipped)."""
    from dp_audit.audit_attacks import read_candidates

    f = tmp_path / "c.txt"
    f.write_text(" my pin is 1 2 3\n\n my pin is 4 5 6 \r\n   \n")
    assert read_candidates(f) == [" my pin is 1 2 3", " my pin is 4 5 6 "]
