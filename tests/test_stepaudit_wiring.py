"""Review of issue 17's second milestone (rev6): the DP-correct modes must read no private data.

Each test names the bug it catches."""

from __future__ import annotations

from types import SimpleNamespace

import torch


def _split(n: int, start: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.arange(start, start + n).view(n, 1)
    return {"input_ids": ids, "labels": torch.zeros(n, dtype=torch.long)}


def test_public_splits_do_not_depend_on_the_private_dev_split():
    """DP-Flat's public modes (teacher P_np, selection prefix, layer probe, black-box θ_np) read the
    public split only, cut by ``public_splits``. Bug caught: the cut sized by the *private* dev
    split (min(n_dev, n_public/4) examples in the probe): adding one example to the dev split (a
    neighbouring data set: the dev split is private, paper mode lists it as unaccounted) moved one
    public example from the teacher's training set to the probe, so the "DP-correct" public mode's
    teacher and layer selection were functions of private data."""
    from dp_audit.trainers.dpflat import public_splits

    public = _split(3000)
    d = SimpleNamespace(public=public, dev=_split(500, start=10_000))
    d_prime = SimpleNamespace(public=public, dev=_split(501, start=10_000))  # D' = D ∪ {one dev example}
    for a, b in zip(public_splits(d), public_splits(d_prime)):
        assert torch.equal(a["input_ids"], b["input_ids"])
    train, probe = public_splits(d)
    assert train["input_ids"].shape[0] + probe["input_ids"].shape[0] == 3000 and probe["input_ids"].shape[0] >= 1


def test_gate_on_a_step_audit_recomputes_at_the_policys_alpha(tmp_path):
    """The gate bounds a step audit at the policy's α (split over Clopper-Pearson and GDP), not at
    the α the audit was run with. Bug caught: a gate that reuses the audit's stored α or bounds
    (the existing test of the policy only changes the tolerance, which a gate reading the stored
    α also passes): a team's stricter α in gate.toml would be silently ignored."""
    from dp_audit.gate import GatePolicy
    from dp_audit.stepaudit import step_audit
    from dp_audit.stepaudit.constructions import build
    from dp_audit.stepaudit.gating import evaluate_step_audit

    out = tmp_path / "s"
    step_audit(build("dpsgd-dirac"), trials=4000, alpha=0.05, seed=0, progress=False, out=out)
    loose, strict = (evaluate_step_audit(out, GatePolicy(alpha=a)) for a in (0.4, 1e-4))
    for res, a in ((loose, 0.4), (strict, 1e-4)):
        assert res.verdict.alpha == a and res.verdict.alpha_per_test == a / 2 and res.verdict.n_tests == 2
        assert [e.alpha for e in res.estimates] == [a / 2, a / 2]
    assert loose.verdict.epsilon_lb_max > strict.verdict.epsilon_lb_max > 0
