"""Reference models in ``dp-audit run`` (issue 6): attack selection, one-line errors, reference
training with the run's own trainer (seeded, resumable, cached, recorded in the manifest), and
the independence of the reference models' IN masks from the target's membership."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dp_audit.audit_attacks import resolve_attacks
from dp_audit.cli import main
from dp_audit.errors import IntegrityError, UsageError
from tests.test_end_to_end import one_line_error, write_config

CLS_REF = ["loss", "ref-loss", "lira-online", "lira-offline", "rmia"]


def test_all_selects_what_applies():
    kw = dict(source="dp-audit")
    assert resolve_attacks(["all"], kind="classifier", n_references=0, has_candidates=False, **kw) == ("loss",)
    assert list(resolve_attacks(["all"], kind="classifier", n_references=4, has_candidates=False, **kw)) == CLS_REF
    one = resolve_attacks(["all"], kind="classifier", n_references=1, has_candidates=False, **kw)
    assert "lira-online" not in one and "lira-offline" in one and "rmia" in one
    assert resolve_attacks(["all"], kind="causal-lm", n_references=0, has_candidates=False, **kw) == \
        ("loss", "zlib", "mink", "minkpp")
    assert resolve_attacks(["all"], kind="causal-lm", n_references=0, has_candidates=True, **kw)[-1] == "exposure"
    assert resolve_attacks(["loss", "all"], kind="classifier", n_references=0, has_candidates=False, **kw) == ("loss",)


@pytest.mark.parametrize("names, kind, refs, cands, source, match", [
    (["lira-online"], "classifier", 0, False, "dp-audit", "reference_models > 0"),
    (["rmia"], "classifier", 0, False, "external", "not for --model"),
    (["loss"], "classifier", 4, False, "external", "run directory of dp-audit train"),
    (["lira-online"], "classifier", 1, False, "dp-audit", ">= 2"),
    (["zlib"], "classifier", 0, False, "dp-audit", "causal-lm"),
    (["exposure"], "causal-lm", 0, False, "external", "--candidates"),
    (["nope"], "classifier", 0, False, "dp-audit", "nope"),
])
def test_unrunnable_attacks_are_one_line_usage_errors(names, kind, refs, cands, source, match):
    with pytest.raises(UsageError, match=match) as exc:
        resolve_attacks(names, kind=kind, n_references=refs, has_candidates=cands, source=source)
    assert "\n" not in str(exc.value)


def test_reference_seeds_are_domain_separated():
    """default_rng([s, 0]) == default_rng(s) in numpy: a bare [seed, index] could replay the
    canary-membership draws. The reference generator must not."""
    from dp_audit.reference import reference_rng

    assert np.array_equal(np.random.default_rng([1, 0]).random(4), np.random.default_rng(1).random(4))
    for s in range(4):
        assert not np.array_equal(reference_rng(s, 0).random(8), np.random.default_rng(s).random(8))
        assert not np.array_equal(reference_rng(s, 0).random(8), reference_rng(s, 1).random(8))


N_REF = 3


@pytest.fixture(scope="module")
def audited(tmp_path_factory, cache_dir):
    """A tiny non-private run audited with every attack and N_REF reference models."""
    root = tmp_path_factory.mktemp("refs")
    cfg = write_config(root, cache_dir, "nondp", trainer="nondp", canaries={"m": 60, "kind": "rare-token"},
                       train={"epochs": 5})
    run = root / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--quiet"]) == 0
    assert main(["run", "--run", str(run), "--quiet", "--no-report", "--set", 'attacks=["all"]',
                 "--set", f"reference_models={N_REF}", "--set", "seed=1"]) == 0
    return run


def test_run_with_references_writes_every_attack(audited):
    audit = json.loads((audited / "audit.json").read_text())
    assert [a["name"] for a in audit["attacks"]] == CLS_REF
    ref = audit["references"]
    assert ref["n_models"] == N_REF and ref["seed"] == 1 and ref["private"] == "all"
    assert audit["audit_config"]["reference_models"] == N_REF
    manifest = json.loads((audited / "manifest.json").read_text())
    for f in ref["files"]:
        assert f in manifest["artifacts"]
    for a in audit["attacks"]:
        assert a["scores_file"] in manifest["artifacts"]
        assert 0.0 <= a["auc"] <= 1.0
    lira = next(a for a in audit["attacks"] if a["name"] == "lira-online")
    assert lira["details"]["reference_models"] == N_REF and lira["details"]["global_variance"] is True
    assert audit["audit_config"]["estimators"] == ["fdp"]  # the default since issue 12 item 11
    assert audit["verdict"]["n_tests"] == len(CLS_REF)  # one test per attack: α split over K = 5
    assert main(["gate", "--run", str(audited)]) == 0  # no finite claim: never fails


def test_reference_masks_are_per_model_and_ignore_the_target_membership(audited):
    from dp_audit.attacks.signals import ReferenceSignals
    from dp_audit.canaries import read_canaries

    ref = ReferenceSignals.load_files(sorted((audited / "references").glob("ref-*.npz")))
    member = np.array([c.member for c in read_canaries(audited / "canaries.jsonl")])
    assert ref.n_models == N_REF and ref.n == member.size
    assert len({tuple(row) for row in ref.in_mask}) == N_REF  # a different IN set per model
    for row in ref.in_mask:
        assert not np.array_equal(row, member) and not np.array_equal(row, ~member)
    # the same seed gives the same masks (pure function of seed and index)
    from dp_audit.reference import reference_rng

    for r in range(N_REF):
        assert np.array_equal(ref.in_mask[r], reference_rng(1, r).random(member.size) < 0.5)


def test_references_resume_and_stale_files_are_detected(audited):
    from dp_audit.canaries import read_canaries
    from dp_audit.manifest import load_manifest
    from dp_audit.reference import _meta_matches, reference_digest, reference_path

    before = {p: os.stat(p).st_mtime_ns for p in (audited / "references").glob("ref-*.npz")}
    assert main(["run", "--run", str(audited), "--quiet", "--no-report", "--set", 'attacks=["lira-offline"]',
                 "--set", f"reference_models={N_REF}", "--set", "seed=1"]) == 0
    assert {p: os.stat(p).st_mtime_ns for p in before} == before  # nothing retrained
    manifest = load_manifest(audited)
    digest = reference_digest(manifest, read_canaries(audited / "canaries.jsonl"), private="all")
    path = reference_path(audited, 0)
    assert _meta_matches(path, seed=1, index=0, digest=digest)
    assert not _meta_matches(path, seed=2, index=0, digest=digest)  # another seed: retrain
    assert not _meta_matches(path, seed=1, index=0, digest=reference_digest(manifest, [], private="all"))


def test_reference_canaries_must_match_the_run(audited):
    import dataclasses

    from dp_audit.canaries import read_canaries
    from dp_audit.manifest import load_manifest
    from dp_audit.reference import reference_task

    cans = read_canaries(audited / "canaries.jsonl")
    cans[0] = dataclasses.replace(cans[0], text="something else")
    with pytest.raises(IntegrityError, match="differs"):
        reference_task(audited, load_manifest(audited), 99, seed=1, canaries=cans)


def test_reference_attack_without_references_exits_2(audited, capsys):
    err = one_line_error(capsys, 2, main(["run", "--run", str(audited), "--quiet", "--no-report",
                                          "--set", 'attacks=["lira-online"]']))
    assert "reference_models" in err


def test_example_audit_config_loads_and_selects_reference_attacks():
    from pathlib import Path

    from dp_audit.config import load_audit_config

    cfg = load_audit_config(Path(__file__).resolve().parents[1] / "examples" / "audit.toml")
    assert cfg.attacks == ("all",) and cfg.reference_models > 0
    assert list(resolve_attacks(cfg.attacks, kind="classifier", n_references=cfg.reference_models,
                                has_candidates=False, source="dp-audit")) == CLS_REF
