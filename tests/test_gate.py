"""The gate on hand-built run directories (manifest + audit.json + scores), through the CLI."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from dp_audit.cli import main
from dp_audit.errors import UsageError
from dp_audit.gate import GatePolicy, evaluate_gate, verdict_line
from dp_audit.io import atomic_write_json, save_npz
from dp_audit.manifest import write_manifest


def make_run(root: Path, *, mu: float = 0.0, m: int = 1000, epsilon: float | str = 1.0, seed: int = 0,
             attacks=("loss",), threat_model="black-box") -> Path:
    rng = np.random.default_rng(seed)
    member = rng.random(m) < 0.5
    entries = []
    for name in attacks:
        scores = member.astype(float) * 10 if mu == math.inf else rng.normal(mu * member, 1.0)
        rel = f"scores/{name}.npz"
        save_npz(root / rel, scores=scores, member=member)
        entries.append({"name": name, "auc": 0.5, "n_members": int(member.sum()),
                        "n_nonmembers": int((~member).sum()), "scores_file": rel})
    claim = {"epsilon": epsilon, "delta": 1e-5, "accountant": "rdp", "unaccounted": []}
    atomic_write_json(root / "audit.json", {"schema_version": 1, "claim": claim, "threat_model": threat_model,
                                            "attacks": entries, "estimates": []})
    write_manifest(root, kind="train", config={}, seeds={"canaries": seed}, claim=claim,
                   artifacts=[f"scores/{a}.npz" for a in attacks] + ["audit.json"])
    return root


def test_perfect_separation_refutes_epsilon_1(tmp_path, capsys):
    run = make_run(tmp_path / "r", mu=math.inf, epsilon=1.0)
    assert main(["gate", "--run", str(run)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    summary = (run / "summary.md").read_text()
    assert "FAIL" in summary and "| loss | fdp |" in summary and "steinke" not in summary  # f-DP alone by default
    root = ET.parse(run / "gate.junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 2  # fdp, verdict
    assert all(c.find("failure") is not None for c in cases)
    assert root.find("testsuite").get("failures") == "2"


def test_null_run_passes(tmp_path):
    run = make_run(tmp_path / "r", mu=0.0, epsilon=1.0)
    assert main(["gate", "--run", str(run), "--quiet"]) == 0
    root = ET.parse(run / "gate.junit.xml").getroot()
    assert root.find("testsuite").get("failures") == "0"
    assert "PASS" in (run / "summary.md").read_text()


def test_no_claim_never_fails(tmp_path):
    run = make_run(tmp_path / "r", mu=math.inf, epsilon="inf")
    res = evaluate_gate(run)
    assert res.verdict.status == "pass" and math.isinf(res.verdict.claimed_epsilon)
    assert res.verdict.epsilon_lb_max > 3


def test_alpha_is_split_over_every_pair(tmp_path):
    run = make_run(tmp_path / "r", mu=2.0, attacks=("loss", "zlib"))
    res = evaluate_gate(run, GatePolicy(estimators=("steinke", "fdp", "raw"), alpha=0.05))
    assert res.verdict.n_tests == 4 and res.verdict.alpha_per_test == pytest.approx(0.0125)
    bounds = [e for e in res.estimates if e.is_bound]
    assert len(bounds) == 4 and all(e.alpha == pytest.approx(0.0125) for e in bounds)
    raws = [e for e in res.estimates if not e.is_bound]
    assert len(raws) == 2  # reported, not counted
    assert res.verdict.epsilon_lb_max == max(e.epsilon_lb for e in bounds)
    # tolerance: a claim just below the bound passes with enough tolerance
    lb = res.verdict.epsilon_lb_max
    assert evaluate_gate(run, GatePolicy(tolerance=100.0)).verdict.status == "pass"
    assert lb > 0


def test_edited_scores_file_is_integrity_error(tmp_path, capsys):
    run = make_run(tmp_path / "r", mu=0.0)
    z = dict(np.load(run / "scores/loss.npz"))
    z["scores"] = z["member"].astype(float)  # forge a perfect attack
    save_npz(run / "scores/loss.npz", **z)
    assert main(["gate", "--run", str(run)]) == 3
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and len(err.strip().splitlines()) == 1


def test_edited_audit_claim_is_integrity_error(tmp_path):
    run = make_run(tmp_path / "r", mu=0.0)
    audit = json.loads((run / "audit.json").read_text())
    audit["claim"]["epsilon"] = 100.0
    (run / "audit.json").write_text(json.dumps(audit))
    assert main(["gate", "--run", str(run)]) == 3


@pytest.mark.parametrize("policy,needle", [
    ("alhpa = 0.01\n", "alpha"),
    ("estimators = ['steinke', 'bogus']\n", "bogus"),
    ("estimators = ['raw']\n", "raw"),
    ("attacks = ['nope']\n", "nope"),
    ("threshold = 'fixed'\n", "threshold"),
    ("alpha = 'x'\n", "alpha"),
])
def test_policy_errors_are_usage_errors(tmp_path, capsys, policy, needle):
    run = make_run(tmp_path / "r", mu=0.0)
    (tmp_path / "gate.toml").write_text(policy)
    assert main(["gate", "--run", str(run), "--policy", str(tmp_path / "gate.toml")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_missing_run_or_audit(tmp_path):
    assert main(["gate", "--run", str(tmp_path / "nope")]) == 2
    run = make_run(tmp_path / "r")
    (run / "audit.json").unlink()
    assert main(["gate", "--run", str(run)]) == 3  # listed in the manifest, now missing


def test_multirun_estimator_on_one_run_scores_is_usage_error(tmp_path):
    run = make_run(tmp_path / "r")
    with pytest.raises(UsageError, match="one-run"):
        evaluate_gate(run, GatePolicy(estimators=("clopper-pearson",)))
    step = make_run(tmp_path / "s", mu=1.0, threat_model="step-level")
    res = evaluate_gate(step, GatePolicy(estimators=("clopper-pearson", "gdp"), claim_model="mu-gdp"))
    assert res.verdict.n_tests == 2


def test_policy_file_and_heldout(tmp_path):
    run = make_run(tmp_path / "r", mu=math.inf, epsilon=1.0)
    (tmp_path / "gate.toml").write_text('attacks = "all"\nestimators = ["fdp"]\nalpha = 0.01\n'
                                        'threshold = "heldout"\ntolerance = 0.5\n')
    assert main(["gate", "--run", str(run), "--policy", str(tmp_path / "gate.toml"),
                 "--summary", str(tmp_path / "s.md"), "--junit", str(tmp_path / "j.xml")]) == 1
    assert (tmp_path / "s.md").is_file() and (tmp_path / "j.xml").is_file()
    assert not (run / "summary.md").exists()


def test_example_policy_parses():
    from dp_audit.gate import load_policy

    p = load_policy(Path(__file__).resolve().parents[1] / "examples" / "gate.toml")
    assert p == GatePolicy()  # the example spells out the defaults


def test_default_gate_passes_a_correct_pure_dp_claim_that_the_gdp_null_refutes(tmp_path):
    """Randomized response at ε = 2 (pure ε-DP, every canary's bit kept with p = e²/(1+e²)),
    claiming ε = 2: the default policy (fdp with the (ε, δ) null) must pass it; the μ-GDP null
    refutes the true claim (docs/estimators.md: "What the f-DP null means")."""
    m, eps = 2000, 2.0
    rng = np.random.default_rng(5)
    member = rng.random(m) < 0.5
    keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    root = tmp_path / "rr"
    save_npz(root / "scores/rr.npz", scores=np.where(keep, member, ~member).astype(float), member=member)
    claim = {"epsilon": eps, "delta": 1e-5, "accountant": "pure", "unaccounted": []}
    atomic_write_json(root / "audit.json", {"schema_version": 1, "claim": claim, "threat_model": "black-box",
                                            "attacks": [{"name": "rr", "scores_file": "scores/rr.npz"}],
                                            "estimates": []})
    write_manifest(root, kind="train", config={}, seeds={}, claim=claim, artifacts=["scores/rr.npz", "audit.json"])
    default = evaluate_gate(root)
    assert default.verdict.status == "pass"
    assert 1.0 < default.verdict.epsilon_lb_max <= eps  # the audit has power, and stays below the truth
    assert evaluate_gate(root, GatePolicy(fdp_null="gdp")).verdict.status == "fail"
    with pytest.raises(UsageError, match="fdp_null"):
        GatePolicy(fdp_null="laplace")


def test_each_attack_keeps_its_own_threat_model(tmp_path):
    """A black-box attack and a white-box one in the same audit: each bound carries its attack's
    threat model, and the verdict names the one of the bound that decided it."""
    run = make_run(tmp_path / "r", mu=math.inf, epsilon=1.0, attacks=("loss", "landscape"))
    audit = json.loads((run / "audit.json").read_text())
    audit["threat_model"] = "white-box"  # the strongest adversary among the attacks
    audit["attacks"][0]["threat_model"] = "black-box"
    audit["attacks"][1]["threat_model"] = "white-box"
    atomic_write_json(run / "audit.json", audit)
    write_manifest(run, kind="train", config={}, seeds={}, claim=audit["claim"],
                   artifacts=["scores/loss.npz", "scores/landscape.npz", "audit.json"])
    res = evaluate_gate(run)
    tm = {(e.attack, e.method): e.threat_model for e in res.estimates}
    assert tm[("loss", "fdp")] == "black-box" and tm[("landscape", "fdp")] == "white-box"
    best = max(res.estimates, key=lambda e: e.epsilon_lb)
    assert res.verdict.threat_model == best.threat_model


def _with_unaccounted(run: Path, *, in_ledger: bool) -> Path:
    """Record DP-Flat's non-private AWP step as unaccounted, in the claim or only in ledger.json."""
    part = {"component": "awp", "reason": "raw gradients of the private micro-batch"}
    audit = json.loads((run / "audit.json").read_text())
    artifacts = ["scores/loss.npz", "audit.json"]
    if in_ledger:
        atomic_write_json(run / "ledger.json", {"events": [], "unaccounted": [part]})
        artifacts.append("ledger.json")
    else:
        audit["claim"]["unaccounted"] = [part]
        atomic_write_json(run / "audit.json", audit)
    write_manifest(run, kind="train", config={}, seeds={}, claim=audit["claim"], artifacts=artifacts)
    return run


@pytest.mark.parametrize("in_ledger", [False, True], ids=["claim", "ledger"])
def test_on_unaccounted_warn_names_the_parts_and_fail_fails(tmp_path, capsys, in_ledger):
    """A null run (no leakage) whose claim leaves AWP unaccounted: the default policy passes but
    the verdict line names the part (and a warning says so); on_unaccounted = "fail" exits 1 with
    a verdict that says why, and the JUnit file has a failing "covers all of training" case.
    Bugs caught: the ledger's unaccounted list ignored, the policy key ignored, a failure that
    claims the ε bound was exceeded, or the parts missing from the verdict line."""
    run = _with_unaccounted(make_run(tmp_path / "r", mu=0.0, epsilon=1.0), in_ledger=in_ledger)
    assert main(["gate", "--run", str(run), "--quiet"]) == 0
    cap = capsys.readouterr()
    assert "PASS" in cap.out and "not accounted: awp" in cap.out
    assert "warning:" in cap.err and "awp" in cap.err
    (tmp_path / "gate.toml").write_text('on_unaccounted = "fail"\n')
    assert main(["gate", "--run", str(run), "--policy", str(tmp_path / "gate.toml")]) == 1
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("FAIL")][0]
    assert "does not cover all of training" in line and "not accounted: awp" in line and "refuted" not in line
    root = ET.parse(run / "gate.junit.xml").getroot()
    cover = [c for c in root.findall(".//testcase") if c.get("name") == "the claim covers all of training"]
    assert len(cover) == 1 and "raw gradients" in cover[0].find("failure").get("message")
    assert "raw gradients" in (run / "summary.md").read_text()
    res = evaluate_gate(run, GatePolicy(on_unaccounted="fail"))
    assert res.verdict.status == "fail" and res.unaccounted == ("awp",) and res.failed_on_unaccounted
    with pytest.raises(UsageError, match="on_unaccounted"):
        GatePolicy(on_unaccounted="ignore")


def test_fully_accounted_run_passes_on_unaccounted_fail(tmp_path):
    """The same null run with nothing unaccounted passes with on_unaccounted = "fail" (bug
    caught: an empty list treated as a failure)."""
    run = make_run(tmp_path / "r", mu=0.0, epsilon=1.0)
    res = evaluate_gate(run, GatePolicy(on_unaccounted="fail"))
    assert res.verdict.status == "pass" and res.unaccounted == () and "not accounted" not in verdict_line(res)


def test_gdp_on_an_eps_delta_claim_is_labelled_in_every_output(tmp_path, capsys):
    """Multi-run scores gated with clopper-pearson and gdp under the default (ε, δ) reading:
    gdp is printed, summarised and written to JUnit as "valid only under a μ-GDP claim", not
    counted (K = 1), with a warning on stderr. Bug caught: the label lost on the way to an
    output, or gdp's α share still taken from the counted tests."""
    run = make_run(tmp_path / "s", mu=1.0, threat_model="step-level")
    (tmp_path / "gate.toml").write_text('estimators = ["clopper-pearson", "gdp"]\n')
    main(["gate", "--run", str(run), "--policy", str(tmp_path / "gate.toml")])
    cap = capsys.readouterr()
    gdp_line = [ln for ln in cap.out.splitlines() if " gdp " in ln][0]
    assert "valid only under a μ-GDP claim; not counted" in gdp_line
    assert "warning:" in cap.err and "claim_model" in cap.err
    assert "1 test(s) at α=0.05" in cap.out
    assert "| gdp |" in (run / "summary.md").read_text()
    assert "no (valid only under a μ-GDP claim)" in (run / "summary.md").read_text()
    skipped = [c for c in ET.parse(run / "gate.junit.xml").getroot().findall(".//testcase")
               if c.get("name", "").startswith("gdp") and c.find("skipped") is not None]
    assert len(skipped) == 1


def test_control_characters_in_names_keep_junit_valid_and_the_verdict_on_one_line(tmp_path, capsys):
    """Bug caught (review of issue 13): an attack name (from audit.json, which whoever builds the run
    controls) holding \\x01 made gate.junit.xml not well-formed XML (CI's parser rejects the whole
    report), and a newline or ESC in it split the verdict line on stdout or drove the terminal."""
    name = "lo\x01ss\n\x1b[31mFAKE PASS<&>\"]]>"
    run = make_run(tmp_path / "r", mu=math.inf, epsilon=1.0, attacks=(name,))
    assert main(["gate", "--run", str(run), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "\x1b" not in out and "\x01" not in out
    root = ET.parse(run / "gate.junit.xml").getroot()  # well-formed
    names = [c.get("classname") for c in root.iter("testcase")]
    assert any("FAKE PASS<&>" in n for n in names)  # kept readable, escaped by the XML writer
