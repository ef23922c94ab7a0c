import json
from pathlib import Path

import numpy as np
import pytest

from dp_audit.canaries import make_canaries, read_canaries, write_canaries
from dp_audit.config import RunConfig, from_mapping, load_run_config
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import atomic_write_text, load_npz, load_scores, save_npz
from dp_audit.manifest import add_artifacts, load_manifest, write_manifest
from dp_audit.overrides import apply_overrides


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "x.txt", "hello")
    assert p.read_text() == "hello"
    assert [f.name for f in p.parent.iterdir()] == ["x.txt"]


def test_npz_roundtrip_and_no_pickles(tmp_path):
    save_npz(tmp_path / "s.npz", scores=np.arange(4.0), member=np.array([1, 0, 1, 0], bool))
    s, m = load_scores(tmp_path / "s.npz")
    assert s.tolist() == [0, 1, 2, 3] and m.dtype == bool
    with pytest.raises(TypeError):
        save_npz(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    # a pickled object array written by numpy itself must be refused on load
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UsageError):
        load_npz(tmp_path / "evil.npz")


def test_scores_validation(tmp_path):
    save_npz(tmp_path / "nan.npz", scores=np.array([0.1, np.nan]), member=np.array([True, False]))
    with pytest.raises(UsageError, match="NaN"):
        load_scores(tmp_path / "nan.npz")
    save_npz(tmp_path / "len.npz", scores=np.zeros(3), member=np.zeros(2, bool))
    with pytest.raises(UsageError, match="shape"):
        load_scores(tmp_path / "len.npz")
    with pytest.raises(UsageError, match="not found"):
        load_scores(tmp_path / "missing.npz")


def test_config_rejects_unknown_and_mistyped_keys(tmp_path):
    with pytest.raises(UsageError, match=r"'train\.epoch'.*did you mean 'epochs'"):
        from_mapping(RunConfig, {"train": {"epoch": 3}})
    with pytest.raises(UsageError, match="must be a number"):
        from_mapping(RunConfig, {"privacy": {"epsilon": "three"}})
    with pytest.raises(UsageError, match="trainer"):
        from_mapping(RunConfig, {"trainer": "dp-sgd"})
    (tmp_path / "c.toml").write_text('trainer = "nondp"\n[privacy]\nepsilon = 2\n')
    assert load_run_config(tmp_path / "c.toml").privacy.epsilon == 2.0
    (tmp_path / "bad.toml").write_text("trainer = \n")
    with pytest.raises(UsageError, match="invalid TOML"):
        load_run_config(tmp_path / "bad.toml")


def test_overrides():
    out = apply_overrides({"privacy": {"epsilon": 3}}, ["privacy.epsilon=1.5", "trainer=nondp", "train.progress=false"])
    assert out == {"privacy": {"epsilon": 1.5}, "trainer": "nondp", "train": {"progress": False}}
    with pytest.raises(UsageError):
        apply_overrides({}, ["novalue"])


def test_canaries_membership_is_seeded_bernoulli(tmp_path):
    vocab = [f"w{i}" for i in range(50)]
    a = make_canaries("mislabelled-random", 2000, rng=np.random.default_rng(5), vocab=vocab)
    b = make_canaries("mislabelled-random", 2000, rng=np.random.default_rng(5), vocab=vocab)
    assert a == b
    frac = np.mean([c.member for c in a])
    assert abs(frac - 0.5) < 3 * np.sqrt(0.25 / 2000)  # Bernoulli(1/2), 3 standard errors
    write_canaries(tmp_path / "c.jsonl", a)
    assert read_canaries(tmp_path / "c.jsonl") == a


def test_canaries_file_errors(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "x", "label": 0, "member": true}\n{"id": "b"\n')
    with pytest.raises(UsageError, match=r"c\.jsonl:2"):
        read_canaries(tmp_path / "c.jsonl")
    with pytest.raises(UsageError, match="not found"):
        read_canaries(tmp_path / "none.jsonl")
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "x", "member": "yes"}\n')
    with pytest.raises(UsageError, match="member"):
        read_canaries(tmp_path / "d.jsonl")


def test_manifest_verifies_hashes(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"weights")
    (tmp_path / "canaries.jsonl").write_text("{}\n")
    write_manifest(tmp_path, kind="train", config={"a": 1}, seeds={"s": 1},
                   claim={"epsilon": 1.0, "delta": 1e-5}, artifacts=["model", "canaries.jsonl"])
    m = load_manifest(tmp_path)
    assert set(m["artifacts"]) == {"model/w.bin", "canaries.jsonl"}
    (tmp_path / "model" / "w.bin").write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        load_manifest(tmp_path)
    (tmp_path / "model" / "w.bin").write_bytes(b"weights")
    (tmp_path / "canaries.jsonl").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_manifest(tmp_path)


def test_edited_manifest_is_an_integrity_error(tmp_path):
    write_manifest(tmp_path, kind="train", config={}, seeds={}, claim={"epsilon": 1.0}, artifacts=[])
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["claim"]["epsilon"] = 8.0  # someone raises the claim to pass the gate
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="edited"):
        load_manifest(tmp_path)


def test_manifest_missing_key_and_unknown_key(tmp_path):
    from dp_audit.manifest import manifest_digest

    write_manifest(tmp_path, kind="train", config={}, seeds={}, claim={}, artifacts=[])
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["surprise"] = 1
    data["digest"] = manifest_digest(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="surprise"):
        load_manifest(tmp_path)
    del data["claim"]
    data["digest"] = manifest_digest(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="claim"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_add_artifacts_updates_hashes(tmp_path):
    write_manifest(tmp_path, kind="train", config={}, seeds={}, claim={}, artifacts=[])
    (tmp_path / "audit.json").write_text("{}")
    m = add_artifacts(tmp_path, ["audit.json"])
    assert "audit.json" in m["artifacts"]
    assert load_manifest(tmp_path)["artifacts"] == m["artifacts"]


@pytest.mark.parametrize("scores, member, needle", [
    # bug caught: complex scores silently lost their imaginary part (astype(float) warns, not raises)
    (np.array([1 + 2j, 0.5]), np.array([True, False]), "real numbers"),
    # bug caught: numeric strings were parsed as floats
    (np.array(["0.3", "0.1"]), np.array([True, False]), "real numbers"),
    # bug caught: datetimes were read as their integer epoch
    (np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[D]"), np.array([True, False]), "real numbers"),
    # bug caught: a structured dtype raised an uncaught TypeError (exit 1)
    (np.zeros(2, dtype=[("a", float), ("b", float)]), np.array([True, False]), "real numbers"),
    # bug caught: a (20, 10) scores array and a (10, 20) member array were both ravelled to 200 and paired
    (np.zeros((20, 10)), np.zeros((10, 20), bool), "shape"),
    # bug caught: member as strings "1"/"0"
    (np.zeros(2), np.array(["1", "0"]), "boolean"),
])
def test_scores_are_never_coerced(tmp_path, scores, member, needle):
    save_npz(tmp_path / "s.npz", scores=scores, member=member)
    with pytest.raises(UsageError, match=needle):
        load_scores(tmp_path / "s.npz")


@pytest.mark.parametrize("line, needle", [
    ('{"id": "a", "text": null, "label": 0, "member": true}', "'text' must be a string"),  # was "None"
    ('{"id": "a", "text": {"x": 1}, "label": 0, "member": true}', "'text' must be a string"),  # was its repr
    ('{"id": null, "text": "t", "label": 0, "member": true}', "'id' must be a string"),  # was "None"
    ('{"id": "a", "text": "t", "label": 0.7, "member": true}', "'label' must be an integer"),  # was 0
    ('{"id": "a", "text": "t", "label": 1e400, "member": true}', "'label' must be an integer"),  # OverflowError → exit 1
    ('{"id": "a", "text": "t", "label": true, "member": true}', "'label' must be an integer"),
    ('["a", "t", 0, true]', "JSON object"),  # was TypeError on obj["id"]... with an unclear message
])
def test_canaries_are_never_coerced(tmp_path, line, needle):
    """Bugs caught: silent coercions (str(None), int(0.7)) and an uncaught OverflowError."""
    (tmp_path / "c.jsonl").write_text(line + "\n")
    with pytest.raises(UsageError, match=needle):
        read_canaries(tmp_path / "c.jsonl")


def test_canaries_not_utf8_is_usage(tmp_path):
    """Bug caught: UnicodeDecodeError escaped read_canaries (exit 1 with a traceback)."""
    (tmp_path / "c.jsonl").write_bytes(b'{"id": "a", "text": "\xff", "label": 0, "member": true}\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        read_canaries(tmp_path / "c.jsonl")


def _fixture_copy(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run_fixture", run)
    return run


def _rewrite_manifest(run, edit):
    from dp_audit.manifest import MANIFEST, manifest_digest

    m = json.loads((run / MANIFEST).read_text())
    edit(m)
    m["digest"] = manifest_digest(m)  # a consistent edit: only the path checks can catch it
    (run / MANIFEST).write_text(json.dumps(m))


def test_manifest_artifact_paths_stay_inside_the_run(tmp_path):
    """Bug caught: `../../etc/hostname` (or an absolute path) in artifacts was hashed and accepted."""
    from dp_audit.io import sha256_file
    from dp_audit.manifest import load_manifest

    run = _fixture_copy(tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the run")
    _rewrite_manifest(run, lambda m: m["artifacts"].update({"../outside.txt": sha256_file(secret)}))
    with pytest.raises(IntegrityError, match="leaves the run directory"):
        load_manifest(run)
    run2 = _fixture_copy(tmp_path / "b")
    (run2 / "link.txt").symlink_to(secret)
    _rewrite_manifest(run2, lambda m: m["artifacts"].update({"link.txt": sha256_file(secret)}))
    with pytest.raises(IntegrityError, match="leaves the run directory"):
        load_manifest(run2)


def test_manifest_artifacts_must_be_a_mapping(tmp_path):
    """Bug caught: a manifest whose artifacts is a list raised AttributeError (exit 1)."""
    from dp_audit.manifest import load_manifest

    run = _fixture_copy(tmp_path)
    _rewrite_manifest(run, lambda m: m.update({"artifacts": list(m["artifacts"])}))
    with pytest.raises(IntegrityError, match="'artifacts' must map"):
        load_manifest(run)


def test_directory_without_manifest_is_usage(tmp_path):
    """Bug caught: `gate` on a directory that is not a run exited 3 (integrity) instead of 2."""
    from dp_audit.cli import main

    assert main(["gate", "--run", str(tmp_path)]) == 2


@pytest.mark.parametrize("section, key, value, needle", [
    # bug caught: epsilon = nan trained with another σ and recorded another claim (issue 13 item 8)
    ("privacy", "epsilon", float("nan"), "finite"),
    ("privacy", "epsilon", float("inf"), "finite"),
    # bug caught: seed = -1 reached numpy's SeedSequence: ValueError, exit 1 (issue 13 item 1)
    ("train", "seed", -1, r"\[0, 2\*\*63\)"),
    ("canaries", "seed", -5, r"\[0, 2\*\*63\)"),
    # bug caught: a negative noise multiplier or clip norm was accepted
    ("privacy", "noise_multiplier", -1.0, "noise_multiplier"),
    ("privacy", "max_grad_norm", -0.5, "max_grad_norm"),
])
def test_run_config_rejects_invalid_numbers(section, key, value, needle):
    from dp_audit.config import run_config_from_dict

    with pytest.raises(UsageError, match=needle):
        run_config_from_dict({section: {key: value}})
