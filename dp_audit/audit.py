"""The audit pipeline behind ``dp-audit run`` (DESIGN.md §2, §5, §6).

target model -> per-example signals on the canaries -> attack scores (``scores/<attack>.npz``)
-> attack metrics -> ε lower bounds (α split by the gate's policy) -> accounting cross-check
-> landscape probes (optional) -> ``audit.json`` (+ hashes in the manifest) -> reports.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dp_audit import SCHEMA_VERSION, __version__
from dp_audit.canaries import Canary, read_canaries, write_canaries
from dp_audit.config import AuditConfig
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import atomic_write_json, atomic_write_text, read_json, sha256_file
from dp_audit.manifest import (PENDING, add_artifacts, drop_artifacts, load_manifest, new_run_id, utc_now,
                               write_manifest)
from dp_audit.rundir import claim_output, staged_output

AUDIT = "audit.json"


@dataclass(frozen=True)
class Target:
    """What is audited: where the model is, what it claims, and its canaries."""

    run_dir: Path
    model_path: Path
    base_path: Path | None
    tokenizer_path: Path | None
    kind: str  # classifier | causal-lm
    claim: dict[str, Any]
    canaries: tuple[Canary, ...]
    source: str  # dp-audit | external
    manifest: dict[str, Any]
    ledger: dict[str, Any] | None
    allow_pickle: bool = False  # load pickle weight files (with torch weights_only=True)


AUDIT_OUTPUT_DIRS = ("signals/", "scores/", "landscapes/", "references/")


def is_audit_output(rel: str) -> bool:
    """Files `dp-audit run` (re)writes; everything else in a run is training's and never rewritten."""
    return rel == AUDIT or rel.startswith(AUDIT_OUTPUT_DIRS)


def target_from_run(run_dir: str | Path) -> Target:
    """A run directory written by ``dp-audit train``; every artifact hash is verified first. A run
    whose previous audit was interrupted is accepted (the audit is redone): its training artifacts
    are still verified, its audit outputs were already dropped from the manifest."""
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir, verify=True, allow_pending=True)
    if manifest["kind"] == "external":
        return _target_from_external_run(run_dir, manifest)
    tuning = manifest["config"].get("model", {}).get("tuning", "full")
    base = run_dir / "base_model" if tuning not in ("full", "head") else None
    ledger = read_json(run_dir / "ledger.json", what="ledger", integrity=True) if (run_dir / "ledger.json").exists() else None
    canaries_path = run_dir / "canaries.jsonl"
    if not canaries_path.is_file():
        raise IntegrityError(f"canaries file missing from run directory: {canaries_path}")
    return Target(run_dir=run_dir, model_path=run_dir / "model", base_path=base,
                  tokenizer_path=run_dir / "tokenizer" if (run_dir / "tokenizer").is_dir() else None,
                  kind=(manifest["config"].get("model") or {}).get("kind") or "classifier",  # causal-lm: LM runs
                  claim=manifest["claim"], canaries=tuple(read_canaries(canaries_path)),
                  source="dp-audit", manifest=manifest, ledger=ledger)


def _target_from_external_run(run_dir: Path, manifest: dict[str, Any]) -> Target:
    """A run made by ``run --model M --out X``: the checkpoint stays at M. Re-auditing it (e.g. after
    an interrupted audit) checks first that M's files still have the sha256 recorded then."""
    source = manifest.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("model_path"), str) \
            or not isinstance(source.get("model_files"), dict):
        raise IntegrityError(f"{run_dir / 'manifest.json'}: an external run needs source.model_path and "
                             f"source.model_files")
    model = Path(source["model_path"])
    if not model.is_dir():
        raise UsageError(f"the checkpoint this run audited is gone: {model}")
    _check_files(model, source["model_files"], what="checkpoint")
    base = source.get("base_path")
    if isinstance(base, str):
        base_files = source.get("base_files")
        if not isinstance(base_files, dict):
            raise IntegrityError(f"{run_dir / 'manifest.json'}: an external run with a base model needs "
                                 f"source.base_files")
        if not Path(base).is_dir():
            raise UsageError(f"the base model this run audited is gone: {base}")
        _check_files(Path(base), base_files, what="base model")
    from dp_audit.attacks.loading import check_model_dir

    for d in (model, base if isinstance(base, str) else None):
        if d is not None:
            check_model_dir(Path(d), allow_pickle=bool(source.get("allow_pickle")))
    kind = (manifest["config"].get("model") or {}).get("kind")
    canaries_path = run_dir / "canaries.jsonl"
    if not canaries_path.is_file():
        raise IntegrityError(f"canaries file missing from run directory: {canaries_path}")
    return Target(run_dir=run_dir, model_path=model, base_path=Path(base) if isinstance(base, str) else None,
                  tokenizer_path=None, kind=kind or "auto", claim=manifest["claim"],
                  canaries=tuple(read_canaries(canaries_path)), source="external", manifest=manifest,
                  ledger=None, allow_pickle=bool(source.get("allow_pickle")))


def _hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative POSIX path -> digest)."""
    return {f.relative_to(root).as_posix(): sha256_file(f) for f in sorted(root.rglob("*")) if f.is_file()}


def _check_files(root: Path, files: dict[str, Any], *, what: str) -> None:
    for rel, digest in files.items():
        path = root / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise IntegrityError(f"the {what} at {root} changed since this run was created ({rel}); "
                                 f"audit it as a new run with --model")


def target_from_checkpoint(
    *, model: str | Path, canaries: str | Path, epsilon: float, delta: float, out: str | Path,
    base: str | Path | None = None, kind: str | None = None, overwrite: bool = False,
    candidates: str | Path | None = None, allow_pickle: bool = False,
) -> Target:
    """A checkpoint dp-audit did not train: create a run directory ``out`` that records it.
    ``candidates`` (a text file, one candidate secret a line) is copied to ``candidates.txt``
    for the exposure attack."""
    model, out = Path(model), Path(out)
    if not model.is_dir():
        raise UsageError(f"model directory not found: {model}")
    if base is not None and not Path(base).is_dir():
        raise UsageError(f"base model directory not found: {base}")
    if not (math.isfinite(epsilon) and epsilon > 0) or not (0 < delta < 1):
        raise UsageError(f"need a finite epsilon > 0 and 0 < delta < 1, got epsilon={epsilon}, delta={delta}")
    from dp_audit.attacks.loading import check_model_dir, resolve_adapter_base

    # a PEFT adapter's base is found (given, or named by adapter_config.json) before --out is made
    base = resolve_adapter_base(model, base) or base
    for d in (model, base):
        if d is not None:
            check_model_dir(Path(d), allow_pickle=allow_pickle)
    cans = read_canaries(canaries)
    from dp_audit.audit_attacks import CANDIDATES, read_candidates

    cand_texts = read_candidates(candidates) if candidates is not None else None
    state = claim_output(out, overwrite=overwrite, inputs=[model, base, canaries, candidates])
    with staged_output(out, state) as tmp:
        write_canaries(tmp / "canaries.jsonl", cans)
        if cand_texts is not None:
            atomic_write_text(tmp / CANDIDATES, "\n".join(cand_texts) + "\n")
        model_files = _hash_files(model)
        # a PEFT adapter's base model is half of what is audited: hashed too (re-audits check it)
        base_files = _hash_files(Path(base)) if base else None
        claim = {"epsilon": float(epsilon), "delta": float(delta), "accountant": "declared", "unaccounted": []}
        manifest = write_manifest(
            tmp, kind="external", config={"model": {"path": str(model.resolve()), "base": str(base) if base else None,
                                                    "kind": kind}},
            seeds={}, claim=claim, artifacts=["canaries.jsonl", *([CANDIDATES] if cand_texts is not None else [])],
            run_id=new_run_id(out.name),
            extra={"source": {"model_path": str(model.resolve()), "model_files": model_files,
                              "base_path": str(Path(base).resolve()) if base else None, "base_files": base_files,
                              "allow_pickle": bool(allow_pickle)}},
        )
    return Target(run_dir=out, model_path=model, base_path=Path(base) if base else None, tokenizer_path=None,
                  kind=kind or "auto", claim=claim, canaries=tuple(cans), source="external", manifest=manifest,
                  ledger=None, allow_pickle=allow_pickle)


def run_audit(target: Target, cfg: AuditConfig, *, progress: bool = True, render: bool = True) -> dict[str, Any]:
    """Run attacks, estimators, cross-checks and probes on ``target``; write ``audit.json``."""
    from dp_audit.attacks.loading import load_hf_model
    from dp_audit.attacks.signals import compute_signals
    from dp_audit.audit_attacks import (AUTO, build_references, default_attacks, needs_references, resolve_attacks,
                                        run_attacks, run_candidates)
    from dp_audit.gate import GatePolicy, canary_repeat, evaluate_gate

    run_dir = target.run_dir
    if not target.canaries:
        raise UsageError("no canaries to audit")
    _validate_before_writing(cfg)
    model, tokenizer, info = load_hf_model(target.model_path, base=target.base_path,
                                           kind=None if target.kind in ("auto", None) else target.kind,
                                           tokenizer_path=target.tokenizer_path, allow_pickle=target.allow_pickle)
    kind = info.get("kind", "classifier")
    texts = [c.text for c in target.canaries]
    from dp_audit.attacks._forward import max_input_length

    info["max_input_tokens"] = max_input_length(model, tokenizer)
    info["truncated_canaries"] = sum(len(ids) > info["max_input_tokens"]
                                     for ids in tokenizer(texts, truncation=False)["input_ids"])
    labels = [c.label for c in target.canaries] if kind == "classifier" else None
    member = np.array([c.member for c in target.canaries], dtype=bool)
    if member.all() or not member.any():
        raise UsageError("canaries must include both members and non-members")
    candidates = run_candidates(run_dir) if kind == "causal-lm" else None
    if cfg.attacks == (AUTO,):  # the default: by model kind (recorded resolved in audit.json)
        cfg = dataclasses.replace(cfg, attacks=default_attacks(kind))
    attack_names = resolve_attacks(cfg.attacks, kind=kind, n_references=cfg.reference_models,
                                   has_candidates=candidates is not None, source=target.source)
    from dp_audit.audit_secrets import SecretsStage, check_before_writing, run_secrets

    split, skipped = check_before_writing(target, cfg, kind=kind, candidates=candidates, model=model,
                                          tokenizer=tokenizer)
    from dp_audit.dirac import has_dirac

    # a run trained with Dirac gradient canaries is always audited white-box with them too (docs/whitebox.md)
    dirac = target.source == "dp-audit" and has_dirac(run_dir, target.manifest)
    if "whitebox-dirac" in attack_names and not dirac:
        raise UsageError("attack 'whitebox-dirac' needs a run trained with Dirac gradient canaries "
                         "(canaries.gradient = m, trainer dpsgd)")
    # From here on files are rewritten: mark the audit pending (gate and report refuse the run until
    # it finishes) and stop vouching for the old audit outputs. A rerun redoes them.
    atomic_write_json(run_dir / PENDING, {"started": utc_now(), "pid": os.getpid()})
    drop_artifacts(run_dir, is_audit_output)
    signals = compute_signals(model, tokenizer, texts, labels, kind=kind, batch_size=cfg.batch_size, progress=progress,
                              candidates=candidates)
    signals.save(run_dir / "signals" / "target.npz")
    reference, references_info, written = None, None, ["signals"]
    if cfg.reference_models > 0 and needs_references(attack_names):
        reference, references_info, ref_files = build_references(target, cfg, progress=progress)
        written += ref_files

    rng = np.random.default_rng(cfg.seed)
    attacks, score_files = run_attacks(attack_names, signals, reference, member, run_dir=run_dir, rng=rng,
                                       n_bootstrap=cfg.bootstrap)
    written += score_files
    # causal LMs: exposure per canary (sampled + extrapolated) and the extraction check (docs/language-models.md)
    secrets = SecretsStage()
    if kind == "causal-lm":
        secrets = run_secrets(target, cfg, model=model, tokenizer=tokenizer, signals=signals, member=member,
                              split=split, skipped=skipped, candidates=candidates, run_dir=run_dir, rng=rng,
                              progress=progress)
    attacks = [*attacks, *secrets.attacks]
    written += secrets.files
    from dp_audit.audit_landscapes import run_landscapes  # probes and the "landscape" attack (docs/landscapes.md)

    land = run_landscapes(target, cfg, model=model, tokenizer=tokenizer, kind=kind, rng=rng, progress=progress)
    attacks = [*attacks, *land.attacks]
    written += list(land.files)
    if dirac:
        from dp_audit.audit_attacks import run_dirac_attack

        dirac_result, dirac_file = run_dirac_attack(run_dir, rng=rng, n_bootstrap=cfg.bootstrap)
        attacks.append(dirac_result)
        written.append(dirac_file)

    audit: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "run_id": target.manifest["run_id"],
        "created": utc_now(),
        "source": target.source,
        "model": _model_info(target, info),
        "claim": target.claim,
        # the landscape attack perturbs weights; the Dirac attack reads them
        "threat_model": "white-box" if land.attacks or dirac else "black-box",
        "canaries": {"m": len(target.canaries), "n_members": int(member.sum()),
                     "kind": target.manifest.get("config", {}).get("canaries", {}).get("kind", "user-supplied"),
                     "file": "canaries.jsonl", "seed": target.manifest.get("seeds", {}).get("canaries")},
        "audit_config": cfg.to_dict(),
        "attacks": [a.to_dict() for a in attacks],
        "references": references_info,
        "estimates": [],
        "ceiling": _ceilings(len(target.canaries), cfg, target.claim, attacks, repeat=canary_repeat(target.manifest)),
        "accounting": _accounting(target),
        "landscapes": land.landscapes,
        "secrets": secrets.block,
        "verdict": None,
        "reproduce": _reproduce(target),
    }
    _write_audit(run_dir, audit, written)
    # every output is written and hashed; only the stored verdict is missing, and the gate
    # recomputes it from the hashed scores anyway: the run is valid from here on
    (run_dir / PENDING).unlink()
    policy = GatePolicy(attacks=tuple(a.name for a in attacks), estimators=tuple(cfg.estimators), alpha=cfg.alpha,
                        threshold=cfg.threshold, fdp_null=cfg.fdp_null)
    gate = evaluate_gate(run_dir, policy)
    audit["estimates"] = [e.to_dict() for e in gate.estimates]
    audit["verdict"] = gate.verdict.to_dict()
    _write_audit(run_dir, audit, [])
    if render and cfg.formats:
        from dp_audit.reports import render_run

        # Reports are renderings of hashed artifacts, not evidence: they are not listed in the
        # manifest, so re-rendering them (`dp-audit report --run R`) never breaks R's hashes.
        render_run(run_dir, formats=tuple(cfg.formats))
    return audit


def _validate_before_writing(cfg: AuditConfig) -> None:
    """Every audit-config error is found before a file is written (a bogus estimator used to replace
    audit.json with `verdict: null` and lose the previous verdict)."""
    from dp_audit.gate import GatePolicy
    from dp_audit.reports import parse_formats

    GatePolicy(attacks="all", estimators=tuple(cfg.estimators), alpha=cfg.alpha, threshold=cfg.threshold,
               fdp_null=cfg.fdp_null)
    if cfg.formats:
        parse_formats(",".join(cfg.formats))


def _write_audit(run_dir: Path, audit: dict[str, Any], written: list[str]) -> None:
    atomic_write_json(run_dir / AUDIT, audit)
    add_artifacts(run_dir, [*written, AUDIT])


def _model_info(target: Target, info: dict[str, Any]) -> dict[str, Any]:
    cfg = target.manifest.get("config", {})
    name = cfg.get("name") or target.run_dir.name if target.source == "dp-audit" else target.model_path.name
    return {"name": name, "trainer": cfg.get("trainer"),
            "mode": _mode(cfg), "path": str(target.model_path), "tuning": cfg.get("model", {}).get("tuning"),
            "kind": info.get("kind"), "max_input_tokens": info.get("max_input_tokens"),
            "truncated_canaries": info.get("truncated_canaries"), "adapter": info.get("peft_type") if info.get("adapter") else None,
            "base": info.get("base")}


def _mode(cfg: dict[str, Any]) -> str | None:
    if cfg.get("trainer") == "dpflat":
        f = cfg.get("dpflat", {})
        return ", ".join(f"{k}={f.get(k + '_mode')}" for k in ("awp", "sparse", "distill") if f.get(k))
    if cfg.get("trainer") == "dpzo":
        return cfg.get("dpzo", {}).get("noise")
    if cfg.get("privacy", {}).get("inject_bug", "none") != "none":
        return f"bug: {cfg['privacy']['inject_bug']}"
    return None


def _ceilings(m: int, cfg: AuditConfig, claim: dict[str, Any], attacks: list[Any], *, repeat: int = 1
              ) -> dict[str, float]:
    """The largest ε_LB a perfect attack could reach with these canaries, per example: with
    canaries inserted ``repeat`` times, through group privacy as the gate's bounds
    (dp_audit.group_privacy), so the report never promises a per-example bound the run cannot give.

    Each attack has its own canaries: the black-box ones (``m``, inserted ``repeat`` times) or, for
    the Dirac attack, the gradient canaries (its own count, each inserted once); a method's ceiling
    is the largest over the attacks the gate counts, at α/K with K counted as the gate counts it
    (attacks whose canaries are skipped, k·δ >= 1, are not tests)."""
    from dp_audit.estimate import epsilon_ceiling
    from dp_audit.gate import GROUP_FREE_ATTACKS, extraction_p_out, has_exposure_bound, n_tests
    from dp_audit.group_privacy import group_delta, per_example_bound
    from dp_audit.records import EpsilonEstimate

    delta = float(claim["delta"])

    def reps(a) -> int:
        return 1 if a.name in GROUP_FREE_ATTACKS else repeat

    def size(a) -> int:  # the attack's own canary count (the Dirac attack scores the gradient canaries)
        return int(a.n_members + a.n_nonmembers) if a.name in GROUP_FREE_ATTACKS else m

    gated = [a for a in attacks if group_delta(0.0, delta, reps(a)) < 1.0]  # the gate skips the others too
    if not gated:
        return {}

    def per_example(group_at, *, k_rep: int, m_a: int) -> float:
        as_est = lambda d: EpsilonEstimate(method="ceiling", epsilon_lb=float(group_at(d)), alpha=0.0,  # noqa: E731
                                           delta=d, m=m_a, threshold="ceiling")
        return float(per_example_bound(as_est, k=k_rep, delta=delta).epsilon_lb)

    n_exposure = sum(has_exposure_bound(a.to_dict()) + (extraction_p_out(a.to_dict(), a.name) is not None)
                     for a in gated)
    k = n_tests(len(gated), len([e for e in cfg.estimators if e != "raw"]), n_exposure)
    out: dict[str, float] = {}

    def keep(key: str, value: float) -> None:
        out[key] = max(out.get(key, -math.inf), value)

    for method in cfg.estimators:
        if method not in ("steinke", "fdp"):
            continue
        for k_rep, m_a in sorted({(reps(a), size(a)) for a in gated}):
            keep(method, per_example(lambda d, method=method, m_a=m_a: epsilon_ceiling(
                m_a, method=method, alpha=cfg.alpha / k, delta=d, threshold=cfg.threshold, fdp_null=cfg.fdp_null),
                k_rep=k_rep, m_a=m_a))
    for a in gated:  # the exposure bound's ceiling: every member at the largest exposure log2(K + 1)
        if has_exposure_bound(a.to_dict()):
            from dp_audit.attacks.exposure import exposure_epsilon_bound

            top = np.full(a.n_members, float(a.details["max_exposure"]))
            keep("exposure", per_example(lambda d, top=top, a=a: exposure_epsilon_bound(
                top, delta=d, alpha=cfg.alpha / k, attack=a.name).epsilon_lb, k_rep=reps(a), m_a=size(a)))
        p_out = extraction_p_out(a.to_dict(), a.name)
        if p_out is not None:  # every member extracted
            from dp_audit.attacks.extraction import extraction_epsilon_bound

            mem = np.arange(a.n_members + a.n_nonmembers) < a.n_members
            keep("extraction", per_example(lambda d, mem=mem, p_out=p_out, a=a: extraction_epsilon_bound(
                mem, member=mem, p_out=p_out, delta=d, alpha=cfg.alpha / k, attack=a.name).epsilon_lb,
                k_rep=reps(a), m_a=size(a)))
    return out


def _accounting(target: Target) -> dict[str, Any] | None:
    if not target.ledger or not target.ledger.get("events"):
        return None
    if all(e.get("mechanism") == "none" for e in target.ledger["events"]):
        return None
    from dp_audit.accounting import cross_check

    eps = target.claim["epsilon"]
    eps = math.inf if isinstance(eps, str) else float(eps)
    return cross_check(target.ledger, claimed_epsilon=eps, delta=float(target.claim["delta"]))


def _reproduce(target: Target) -> str:
    if target.source == "external":
        src = target.manifest.get("source", {})
        base = f" --base-model {src['base_path']}" if src.get("base_path") else ""
        from dp_audit.audit_attacks import CANDIDATES

        cand = f" --candidates {CANDIDATES}" if CANDIDATES in target.manifest.get("artifacts", {}) else ""
        return (f"dp-audit run --model {src.get('model_path')}{base} --canaries canaries.jsonl{cand} "
                f"--epsilon {target.claim['epsilon']} --delta {target.claim['delta']} --out {target.run_dir}")
    cfg = target.manifest.get("config", {})
    return (f"dp-audit train --config <config.toml with manifest.json 'config'> --out {target.run_dir} "
            f"&& dp-audit run --run {target.run_dir}  # trainer={cfg.get('trainer')}")


def with_defaults(cfg: AuditConfig, **changes: Any) -> AuditConfig:
    return dataclasses.replace(cfg, **changes)
