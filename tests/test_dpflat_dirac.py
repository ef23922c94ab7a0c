"""Dirac gradient canaries in white-box DP-Flat (``canaries.gradient`` with trainer "dpflat";
dp_audit.trainers.dpflat_dirac; docs/whitebox.md "Dirac canaries in DP-Flat")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from tests.conftest import TINY, merge

PREFIX = {"tuning": "prefix", "num_virtual_tokens": 6}
DPSAT = {"awp": True, "awp_mode": "dpsat", "sparse": False, "distill": False}
M = 1000  # Dirac canaries (dense path: members × m ≈ 5·10⁵ floats)


def _cfg(cache_dir: Path, **sections):
    from dp_audit.config import run_config_from_dict

    base = merge(TINY, {"trainer": "dpflat", "model": {**PREFIX, "cache_dir": str(cache_dir)},
                        "canaries": {"m": 20, "gradient": M}, "dpflat": DPSAT,
                        "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "epochs": 4},
                        "privacy": {"epsilon": 0.5}})
    return run_config_from_dict(merge(base, sections))


def _train(cache_dir: Path, out: Path, **sections) -> Path:
    from dp_audit.trainers.base import train_run

    return train_run(_cfg(cache_dir, **sections), out, progress=False)


def _bound(run: Path) -> tuple[float, float]:
    """(f-DP ε_LB of the Dirac scores at α = 0.05, the run's claimed ε)."""
    from dp_audit.attacks.dirac import scores_for_run
    from dp_audit.estimate import estimate_epsilon
    from dp_audit.manifest import load_manifest

    res = scores_for_run(run)
    est = estimate_epsilon(res.scores, res.member, method="fdp", alpha=0.05, delta=1e-5)
    return float(est.epsilon_lb), float(load_manifest(run)["claim"]["epsilon"])


def test_dpsat_run_with_dirac_canaries_stays_below_its_claim(cache_dir, tmp_path):
    """Validity (issue 17 leftover, item 2). DP-Flat private mode (DP-SAT AWP), 1000 Dirac canaries
    at a claimed ε = 0.5: the white-box one-run f-DP bound must not exceed the claim. Bugs caught:
    any leak of the canary path beyond the accounted mechanism: non-members added, the audit
    parameter left out of the noise (its coordinates would move by whole multiples of lr·C/E),
    canaries escaping clipping, a membership-dependent final value saved. The broken variants
    below, with the same settings, exceed the claim (that is this test's power)."""
    run = _train(cache_dir, tmp_path / "r", train={"seed": 3})
    eps_lb, claim = _bound(run)
    assert 0.4 < claim < 0.6
    assert eps_lb <= claim
    _check_closed_form(run)


def _check_closed_form(run: Path) -> None:
    """Review rvwb17: the audit parameter's released trajectory against its closed form. With
    plain SGD (lr 0.1, no weight decay) a canary's score is lr/E · (C·K_i + Σ_t σC z_t): a
    non-member's is N(0, (lr·σC/E)²·T) exactly, and members exceed non-members on average by
    lr·C·q·T/E. Bugs caught: A noised with another std than the run's σC (e.g. Opacus' noise
    multiplier not applied to the appended group, or A missing from ``optimizer.params`` on some
    steps), scaled by another batch size than the prefix (the variance: 1.3× the noise std on A
    fails it, seen), or its canaries included at every step instead of at rate q (the shift; it is
    too noisy to tell q from 0 here): the validity bound alone cannot see a *weaker* audit (too
    much noise on A)."""
    from dp_audit.attacks.dirac import scores_for_run
    from dp_audit.io import read_json

    res = scores_for_run(run)
    dp = read_json(run / "manifest.json")["notes"]["dp"]
    lr, E, T, q, sigma = 0.1, dp["expected_batch_size"], dp["steps"], dp["sample_rate"], dp["noise_multiplier"]
    sd = lr * sigma * 1.0 / E * T ** 0.5
    non = res.scores[~res.member]
    chi2 = float((non ** 2).sum() / sd ** 2)
    p = stats.chi2.cdf(chi2, df=non.size)
    assert 1e-4 < p < 1 - 1e-4, f"non-member score variance {non.var():.3g} vs σ-closed form {sd ** 2:.3g}"
    shift = float(res.scores[res.member].mean() - non.mean())
    se = sd * (1 / non.size + 1 / int(res.member.sum())) ** 0.5
    assert abs(shift - lr * q * T / E) < 4 * se, (shift, lr * q * T / E, se)


def test_canaries_added_outside_poisson_sampling_are_refuted(cache_dir, tmp_path, monkeypatch):
    """Power of the validity test above. Bug caught: the member canaries added at every step (not
    drawn at rate q from the sampling generator): each member coordinate then gets T·C against
    noise σC√T, far above what the subsampled claim allows; the same f-DP bound must exceed the
    claim (measured: ≈ 3 vs 0.5)."""
    from dp_audit.trainers.dirac import DiracCanaries

    monkeypatch.setattr(DiracCanaries, "draw", lambda self, generator: self._member_index)
    run = _train(cache_dir, tmp_path / "r", train={"seed": 3})
    eps_lb, claim = _bound(run)
    assert eps_lb > claim


def test_canaries_without_noise_are_refuted_and_are_clipped(cache_dir, tmp_path, monkeypatch):
    """Bugs caught: the audit parameter not noised (here: the ``no-noise`` regression bug, which
    must be refuted by the white-box score alone), and a canary gradient not clipped: with a
    canary norm of 2.5 > C = 1, every member coordinate must still move by whole multiples of
    lr·C/E (E = the expected batch size), never of lr·2.5/E; non-members never move at all; the
    inclusion count K_i has mean T·q (Poisson rate q, not 1)."""
    import dp_audit.trainers.dpflat as dpflat
    from dp_audit.attacks.dirac import scores_for_run
    from dp_audit.io import read_json

    real = dpflat.AuditSlotCanaries
    monkeypatch.setattr(dpflat, "AuditSlotCanaries", lambda **kw: real(**{**kw, "norm": 2.5}))
    run = _train(cache_dir, tmp_path / "r", privacy={"inject_bug": "no-noise", "epsilon": 0.5})
    eps_lb, claim = _bound(run)
    assert eps_lb > claim
    res = scores_for_run(run)
    assert np.all(res.scores[~res.member] == 0)
    dp = read_json(run / "manifest.json")["notes"]["dp"]
    unit = 0.1 * 1.0 / dp["expected_batch_size"]
    k = res.scores[res.member] / unit
    assert np.all(np.abs(k - np.round(k)) < 1e-3), "a member moved by a non-multiple of lr·C/E: not clipped to C"
    total, trials = int(np.round(k).sum()), int(res.member.sum()) * int(dp["steps"])
    assert stats.binomtest(total, trials, dp["sample_rate"]).pvalue > 1e-4


def test_record_ledger_and_files_of_a_dpflat_run(cache_dir, tmp_path):
    """Bugs caught: the audit parameter's final value not saved or not hashed (an edited file would
    go unnoticed: loading the manifest must raise IntegrityError, exit 3), the record pointing at
    the model file (which has no such tensor), the canaries changing the claim or the accounted
    mechanism, the ledger not saying the claim covers them, or the scores read from anything but
    w_0 − w_T of the saved audit parameter."""
    from safetensors.numpy import load_file, save_file

    from dp_audit.attacks.dirac import scores_for_run
    from dp_audit.dirac import RECORD, W0, WT
    from dp_audit.errors import IntegrityError
    from dp_audit.io import read_json
    from dp_audit.manifest import load_manifest

    run = _train(cache_dir, tmp_path / "with", train={"epochs": 1})
    without = _train(cache_dir, tmp_path / "without", train={"epochs": 1}, canaries={"gradient": 0})
    man = load_manifest(run)
    assert {RECORD, W0, WT} <= set(man["artifacts"])
    rec = read_json(run / RECORD)
    assert rec["final"] == {"file": WT, "tensor": "w"} and rec["shape"] == [1, M]
    w0, wt = load_file(str(run / W0))["w0"], load_file(str(run / WT))["w"]
    assert w0.shape == wt.shape == (1, M) and np.all(w0 == 0) and not np.array_equal(w0, wt)
    res = scores_for_run(run)
    np.testing.assert_array_equal(res.scores, (w0 - wt).reshape(-1).astype(np.float64))
    assert res.details["final_weights"] == WT and res.member.sum() == la_members(run)
    assert man["claim"] == load_manifest(without)["claim"]
    la, lb = read_json(run / "ledger.json"), read_json(without / "ledger.json")
    strip = lambda ev: {k: v for k, v in ev.items() if k != "observed"}  # noqa: E731
    assert [strip(e) for e in la["events"]] == [strip(e) for e in lb["events"]]
    assert la["events"][0]["observed"]["steps"] == lb["events"][0]["observed"]["steps"]
    assert la["gradient_canaries"]["covered_by_claim"] is True and "gradient_canaries" not in lb
    save_file({"w": wt + 1e-3}, str(run / WT))
    with pytest.raises(IntegrityError):
        load_manifest(run)


def la_members(run: Path) -> int:
    from dp_audit.io import read_json

    return int(read_json(run / "ledger.json")["gradient_canaries"]["members"])


def test_paper_awp_micro_batch_is_drawn_from_the_real_examples_only(monkeypatch):
    """Bug caught: the step's Dirac canaries taking places in paper-mode AWP's micro-batch (the
    wb17 version drew it from the n real examples *and* the k canaries). A canary's prefix gradient
    is 0, so it can only displace a real example: the real micro-batch shrinks and v = 0 whenever
    the micro-batch holds canaries only (in the quick study, micro-batch 1 and ~500 member
    canaries on ~900 examples: about 1 AWP step in 3), which changes the paper mode the study's
    other columns measure, and lets the canaries' secret inclusion move the prefix release.
    Through the trainer's own ``attach_components`` with 12 canaries at q = 1 (every member drawn
    at every step), n = 4 and a micro-batch of 2: v must be applied at every step and each real
    position enter it with frequency 2/4 (the wb17 draw gives 2/(4 + k) and v = 0 in C(k,2)/C(4+k,2)
    of the steps)."""
    import dp_audit.trainers.dpflat_awp as awp_mod
    from dp_audit.trainers.dpflat import attach_components
    from dp_audit.trainers.dpflat_awp import AWP
    from dp_audit.trainers.dpflat_dirac import AuditSlotCanaries
    from dp_audit.trainers.dpflat_prefix import PrefixHook, prefix_weight
    from tests.test_dpflat_mechanisms import _dp_optimizer, tiny_prefix_model

    seen: list[torch.Tensor] = []

    def fake_gradient(model, micro):
        seen.append(micro["idx"].clone())
        return torch.ones_like(prefix_weight(model))

    monkeypatch.setattr(awp_mod, "raw_prefix_gradient", fake_gradient)
    model = tiny_prefix_model()
    gsm, opt = _dp_optimizer(model, C=1.0, E=4)
    can = AuditSlotCanaries(m=12, norm=1.0, sample_rate=1.0, seed=7)
    can.attach(opt, torch.Generator().manual_seed(1))
    hook = PrefixHook(model)
    awp = AWP(model=model, hook=hook, mode="paper", gamma=1e-2, active_steps=10**9, micro_batch=2,
              generator=torch.Generator().manual_seed(5))
    before_step, stepper = attach_components(opt, prefix_weight(model), awp=awp, distill=None, mask=None,
                                             canaries=can)
    pos, rounds = torch.arange(4), 400
    counts = torch.zeros(4)
    for _ in range(rounds):
        seen.clear()
        before_step(0, {"labels": pos, "idx": pos})
        assert can._pending is not None and int(can._pending.numel()) == int(can.canaries.member.sum()) >= 2
        awp.after_step()
        assert len(seen) == 1 and seen[0].numel() == 2, "v not applied, or from fewer than 2 real examples"
        counts[seen[0]] += 1
    assert awp.applied == rounds
    for c in counts.tolist():
        assert stats.binomtest(int(c), rounds, 2 / 4).pvalue > 1e-3
    hook.remove()


@pytest.mark.parametrize("sections, needle", [
    ({"dpflat": {"blackbox": True, "awp": False, "sparse": False, "distill": True}}, "black-box"),
    ({"trainer": "dpzo"}, "trainers 'dpsgd' and 'dpflat'"),
    ({"trainer": "nondp"}, "trainers 'dpsgd' and 'dpflat'"),
    ({"canaries": {"gradient": 2.5}}, "integer"),
    ({"canaries": {"gradient": 10**8}}, "lower canaries.gradient or train.batch_size"),
    ({"canaries": {"gradient": 10**7}, "train": {"batch_size": 32}}, "1 GiB"),
])
def test_unsupported_dpflat_and_zo_configurations_are_usage_errors(cache_dir, sections, needle):
    """Bug caught: Dirac canaries accepted by a trainer that never calls the canary path (black-box
    DP-Flat and DP-ZO release one clipped scalar per example, not a gradient vector; non-private
    training has no clipping): the record would list members that never entered a batch, and the
    white-box audit would read nothing; and (review rvwb17) an m whose per-step zero rows on the
    audit parameter (batch × m floats) cannot fit, which crashed in training (m = 10⁸ at batch 32:
    12.8 GB per step; exit 4 or killed) instead of a one-line error. Must be exit 2 (UsageError)
    before any work."""
    from dp_audit.errors import UsageError

    with pytest.raises(UsageError, match=needle):
        _cfg(cache_dir, **sections)


def test_every_dpflat_whitebox_study_arm_carries_dirac_canaries():
    """Bug caught: a DP-Flat white-box arm of the study trained without Dirac canaries, so its
    white-box column silently stays "-" (issue 17 leftover, item 3); DP-ZO arms must not carry them
    (the config would be refused)."""
    from dp_audit.study.arms import DIRAC_CANARIES, awp_leak_arms

    for arm in awp_leak_arms():
        m = arm.spec.get("canaries", {}).get("gradient", 0)
        if arm.spec["trainer"] in ("dpsgd", "dpflat"):
            assert m == DIRAC_CANARIES > 0, arm.name
        else:
            assert m == 0, arm.name


def _one_dpflat_step(*, canaries: bool, sparse: bool = False, monkeypatch=None):
    """One DP-Flat step (paper distillation, σ = 0, C = 0.5, E = 4) through the trainer's own
    ``attach_components`` on a tiny prefix model, optionally with 12 Dirac canaries sampled at
    q = 1 (every member included). Returns (released prefix gradient, audit gradient or None, the
    canaries or None)."""
    import dp_audit.trainers.dirac as dirac_mod
    from dp_audit.trainers.dpflat import attach_components
    from dp_audit.trainers.dpflat_dirac import AuditSlotCanaries
    from dp_audit.trainers.dpflat_distill import Distill
    from dp_audit.trainers.dpflat_prefix import prefix_weight
    from tests.test_dpflat_mechanisms import _dp_optimizer, forward, tiny_batch, tiny_prefix_model

    if sparse:
        monkeypatch.setattr(dirac_mod, "DENSE_LIMIT", 0)
    model = tiny_prefix_model(seed=2)
    w = prefix_weight(model)
    anchor = w.detach() + 0.3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
    gsm, opt = _dp_optimizer(model, C=0.5, E=4)
    can = None
    if canaries:
        can = AuditSlotCanaries(m=12, norm=0.5, sample_rate=1.0, seed=7)
        can.attach(opt, torch.Generator().manual_seed(1))
    released = {}
    inner = opt.original_optimizer.step

    def capture(*a, **k):
        released["w"] = w.grad.detach().clone()
        released["a"] = None if can is None else can.param.grad.detach().clone()
        return inner(*a, **k)

    opt.original_optimizer.step = capture
    before_step, stepper = attach_components(opt, w, awp=None, distill=Distill(anchor=anchor, lam=0.2, mode="paper"),
                                             mask=None, canaries=can)
    batch = tiny_batch(n=5)
    stepper.zero_grad(True)
    before_step(0, batch)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.functional.cross_entropy(forward(gsm, batch).logits, batch["labels"]).backward()
    if can is not None:
        can.after_backward(0, 5)
    stepper.step()
    return released["w"], released["a"], can


@pytest.mark.parametrize("sparse", [False, True])
def test_canaries_leave_the_prefix_release_unchanged_and_reach_only_their_coordinates(sparse, monkeypatch):
    """Bugs caught: (a) the canaries counted into paper-mode distillation's coefficient sum (the
    prefix's released gradient would gain k·λ∇R/E: a canary's per-sample gradient is C·e_i, nothing
    on the prefix); (b) the sparse path (many canaries) not matching the dense one, or either path
    giving a member canary anything but min(1, C/‖g‖)·C = C on its own coordinate, a non-member
    anything, or a real example anything on the audit parameter."""
    w_plain, _, _ = _one_dpflat_step(canaries=False)
    w_can, a_can, can = _one_dpflat_step(canaries=True, sparse=sparse, monkeypatch=monkeypatch)
    torch.testing.assert_close(w_can, w_plain, rtol=0, atol=1e-7)
    expected = torch.zeros(12)
    expected[torch.as_tensor(can.canaries.index[can.canaries.member])] = 0.5 / 4  # C / E, noise 0
    torch.testing.assert_close(a_can.reshape(-1), expected, rtol=0, atol=1e-6)
    assert 0 < int(can.canaries.member.sum()) < 12 and can.included == int(can.canaries.member.sum())
