"""Dirac gradient canaries (``canaries.gradient``; dp_audit.trainers.dirac) and the white-box
one-run attack ``whitebox-dirac`` (dp_audit.attacks.dirac); docs/whitebox.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from tests.conftest import TINY, merge


class _Toy(torch.nn.Module):
    """A BERT-named position table plus a head: enough for the canary slot."""

    def __init__(self):
        super().__init__()
        self.embeddings = torch.nn.Module()
        self.embeddings.position_embeddings = torch.nn.Embedding(20, 5)
        self.head = torch.nn.Linear(5, 2)


def _canaries(m: int = 20, *, norm: float = 0.7, q: float = 0.3, seed: int = 3):
    from dp_audit.trainers.dirac import DiracCanaries, position_slot

    model = _Toy()
    return model, DiracCanaries(position_slot(model, max_length=6), m=m, norm=norm, sample_rate=q, seed=seed)


def test_canary_gradient_has_norm_c_on_its_coordinate_only():
    """Bug caught: a canary's per-sample gradient with the wrong norm (e.g. C/B, or scaled like a
    mean loss), spread over several coordinates, written on a used position row, or overwriting
    the real examples' per-sample gradients instead of being appended."""
    model, can = _canaries()
    params = list(model.parameters())
    real = {p: torch.randn(4, *p.shape) for p in params}
    for p in params:
        p.grad_sample = real[p].clone()
    idx = torch.as_tensor(can.index[can.member][:3])
    can.add_per_sample_gradients(params, idx, batch_size=4)
    slot = model.embeddings.position_embeddings.weight
    for p in params:
        assert p.grad_sample.shape == (7, *p.shape)
        assert torch.equal(p.grad_sample[:4], real[p])  # the real examples' gradients untouched
    norms = torch.stack([p.grad_sample[4:].reshape(3, -1).norm(dim=1) for p in params], dim=1).norm(dim=1)
    assert torch.allclose(norms, torch.full((3,), 0.7), rtol=0, atol=1e-7)
    flat = slot.grad_sample[4:].reshape(3, -1)
    for j in range(3):
        nz = torch.nonzero(flat[j]).flatten().tolist()
        assert nz == [int(idx[j])]
        assert int(idx[j]) // slot.shape[1] >= 6  # an unused position row (>= max_length)
    assert torch.count_nonzero(model.head.weight.grad_sample[4:]) == 0


def test_members_included_at_rate_q_nonmembers_never():
    """Bug caught: member canaries added to every batch (rate 1) or at a rate other than q, or
    non-member canaries ever entering a batch."""
    _, can = _canaries(m=40, q=0.3)
    g = torch.Generator().manual_seed(11)
    members, steps = set(can.index[can.member].tolist()), 2000
    count = 0
    for _ in range(steps):
        idx = can.draw(g).tolist()
        assert set(idx) <= members  # never a non-member
        assert len(set(idx)) == len(idx)
        count += len(idx)
    n = steps * len(members)
    assert stats.binomtest(count, n, 0.3).pvalue > 1e-3
    assert 0 < len(members) < 40


def _cfg(cache_dir: Path, **sections):
    from dp_audit.config import run_config_from_dict

    base = merge(TINY, {"model": {"cache_dir": str(cache_dir)}, "canaries": {"m": 40, "gradient": 200},
                        "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 100, "epochs": 2},
                        "privacy": {"epsilon": 2.0}})
    return run_config_from_dict(merge(base, sections))


def _train(cache_dir: Path, out: Path, **sections) -> Path:
    from dp_audit.trainers.base import train_run

    return train_run(_cfg(cache_dir, **sections), out, progress=False)


def test_w0_saved_hashed_and_equal_to_the_initial_weights(cache_dir, tmp_path):
    """Bug caught: w_0 taken after training (or after the first step) instead of before it, or
    not recorded in the manifest (an edited w_0 would then go unnoticed: exit 3 expected)."""
    from safetensors.numpy import load_file

    from dp_audit.cli import main
    from dp_audit.dirac import RECORD, W0
    from dp_audit.manifest import load_manifest

    run = _train(cache_dir, tmp_path / "r")
    man = load_manifest(run)
    assert W0 in man["artifacts"] and RECORD in man["artifacts"]
    w0 = load_file(str(run / W0))["w0"]
    base = load_file(str(run / "base_model" / "model.safetensors"))  # the model before training
    final = load_file(str(run / "model" / "model.safetensors"))
    name = "bert.embeddings.position_embeddings.weight"
    np.testing.assert_array_equal(w0, base[name])
    assert not np.array_equal(w0, final[name])  # training moved the canary rows
    assert main(["run", "--run", str(run), "--set", "formats=[]", "--quiet"]) == 0
    from safetensors.numpy import save_file

    save_file({"w0": w0 + 1e-3}, str(run / W0))
    assert main(["gate", "--run", str(run), "--quiet"]) == 3


def test_scores_are_w0_minus_wT_at_each_canary_coordinate(cache_dir, tmp_path):
    """Bug caught: the score taken from the wrong difference (w_T − w_0: members would score low),
    from the wrong coordinate, or from the wrong parameter file."""
    from safetensors.numpy import load_file

    from dp_audit.attacks.dirac import dirac_scores, scores_for_run
    from dp_audit.dirac import W0

    w0 = np.arange(12.0).reshape(3, 4)
    wt = w0.copy()
    wt.reshape(-1)[[5, 9]] -= [2.0, 0.5]  # two descent steps along -e_5, -e_9
    np.testing.assert_array_equal(dirac_scores(w0, wt, np.array([5, 9, 1])), [2.0, 0.5, 0.0])

    run = _train(cache_dir, tmp_path / "r", privacy={"inject_bug": "no-noise"})
    res = scores_for_run(run)
    w0 = load_file(str(run / W0))["w0"].reshape(-1).astype(np.float64)
    wt = load_file(str(run / "model" / "model.safetensors"))["bert.embeddings.position_embeddings.weight"]
    rec_index = np.arange(24 * 32, 24 * 32 + 200)  # rows >= max_length 24 of a 32-wide table
    np.testing.assert_array_equal(res.scores, w0[rec_index] - wt.reshape(-1)[rec_index].astype(np.float64))
    # no noise: a non-member coordinate never moves; a member's moved by lr·C/(qn) per inclusion, down
    assert np.all(res.scores[~res.member] == 0)
    step = 0.1 * 1.0 / 100
    k = res.scores[res.member] / step
    assert np.all(np.abs(k - np.round(k)) < 1e-2) and (k > 0.5).mean() > 0.8


def test_claim_and_mechanism_unchanged_by_canaries(cache_dir, tmp_path):
    """Bug caught: the canaries change the claim or the accounted mechanism (e.g. counted into n,
    which would change q and σ), or the ledger stops saying that the claim covers them."""
    from dp_audit.io import read_json
    from dp_audit.manifest import load_manifest

    with_c = _train(cache_dir, tmp_path / "with")
    without = _train(cache_dir, tmp_path / "without", canaries={"gradient": 0})
    a, b = load_manifest(with_c), load_manifest(without)
    assert a["claim"] == b["claim"]
    la, lb = read_json(with_c / "ledger.json"), read_json(without / "ledger.json")
    strip = lambda ev: {k: v for k, v in ev.items() if k != "observed"}  # noqa: E731
    assert [strip(e) for e in la["events"]] == [strip(e) for e in lb["events"]]
    obs_a, obs_b = la["events"][0]["observed"], lb["events"][0]["observed"]
    for key in ("noise_multiplier", "max_grad_norm", "sample_rate", "steps"):
        assert obs_a[key] == obs_b[key]
    assert la["gradient_canaries"]["covered_by_claim"] is True and "gradient_canaries" not in lb
    assert la["unaccounted"] == lb["unaccounted"] == []


def test_gate_counts_the_dirac_attack_and_refutes_no_noise(cache_dir, tmp_path):
    """Bug caught: run_audit not scoring the Dirac canaries (or not white-box / one-run), the gate
    not counting them (α split over 1 attack), or a no-noise pipeline passing: its black-box LOSS
    bound is 0 here, only the white-box Dirac score refutes it."""
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig
    from dp_audit.gate import GatePolicy, evaluate_gate

    run = _train(cache_dir, tmp_path / "r", train={"epochs": 4}, privacy={"inject_bug": "no-noise"})
    audit = run_audit(target_from_run(run), AuditConfig(formats=()), progress=False, render=False)
    entry = {a["name"]: a for a in audit["attacks"]}["whitebox-dirac"]
    assert entry["threat_model"] == "white-box" and entry["details"]["design"] == "one-run"
    assert entry["scores_file"] == "scores/whitebox-dirac.npz" and audit["threat_model"] == "white-box"
    res = evaluate_gate(run, GatePolicy(observed_mechanism=False))
    assert res.verdict.n_tests == 2  # {loss, whitebox-dirac} x {fdp}
    assert res.verdict.status == "fail" and res.verdict.best_attack == "whitebox-dirac"
    assert res.verdict.epsilon_lb_max > float(audit["claim"]["epsilon"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_dpsgd_never_refuted_by_dirac_canaries(cache_dir, tmp_path, seed):
    """Bug caught: any leak beyond the claim in the canary path (non-members added, noise not
    applied to the canary coordinates, canaries escaping clipping): at a small claim (ε = 0.5),
    the f-DP bound of 200 Dirac canaries would exceed it. Correct DP-SGD must stay below."""
    from dp_audit.attacks.dirac import scores_for_run
    from dp_audit.estimate import estimate_epsilon
    from dp_audit.manifest import load_manifest

    run = _train(cache_dir, tmp_path / "r", canaries={"seed": 50 + seed}, train={"seed": seed, "epochs": 4},
                 privacy={"epsilon": 0.5})
    res = scores_for_run(run)
    claim = float(load_manifest(run)["claim"]["epsilon"])
    est = estimate_epsilon(res.scores, res.member, method="fdp", alpha=0.05, delta=1e-5)
    assert est.epsilon_lb <= claim


@pytest.mark.parametrize("sections, needle", [
    ({"model": {"tuning": "prefix"}}, "model.tuning = 'full'"),
    ({"model": {"tuning": "lora"}}, "model.tuning = 'full'"),
    ({"privacy": {"grad_sample_mode": "ghost"}}, "per-sample gradients"),
    ({"privacy": {"grad_sample_mode": "bk"}}, "per-sample gradients"),
    ({"trainer": "dpzo"}, "trainers 'dpsgd' and 'dpflat'"),
    ({"canaries": {"gradient": -1}}, ">= 0"),
])
def test_configs_where_canary_coordinates_could_get_real_gradients_are_refused(cache_dir, sections, needle):
    """Bug caught: Dirac canaries accepted with prefix or LoRA tuning (the position table is frozen,
    or, trained through a prefix, not the released parameter), with ghost clipping (no per-sample
    gradient rows to append to: the canary would skip clipping), or in a trainer that never calls
    the canary hook (the record would claim members that never entered a batch)."""
    from dp_audit.errors import UsageError

    with pytest.raises(UsageError, match=needle):
        _cfg(cache_dir, **sections)


def test_too_many_canaries_for_the_unused_rows_is_a_usage_error():
    """Bug caught: canary coordinates spilling past the table (index error mid-training) or wrapping
    into used position rows (< max_length) where real inputs have gradients."""
    from dp_audit.errors import UsageError
    from dp_audit.trainers.dirac import DiracCanaries, position_slot

    model = _Toy()  # 20 rows x 5, rows >= 6 unused: 70 free coordinates
    slot = position_slot(model, max_length=6)
    can = DiracCanaries(slot, m=70, norm=1.0, sample_rate=0.5, seed=0)
    assert can.index.min() == 6 * 5 and can.index.max() == 20 * 5 - 1
    with pytest.raises(UsageError, match="unused coordinates"):
        DiracCanaries(slot, m=71, norm=1.0, sample_rate=0.5, seed=0)


@pytest.mark.parametrize("norm", [0.7, 2.5])
def test_sparse_canaries_are_clipped_and_summed_exactly_like_appended_rows(norm, monkeypatch):
    """Many canaries (m = 10⁴ … 10⁵) are added after Opacus' clipping instead of as dense rows.
    The released step must be the same: the same real batch, the same canaries, noise 0, once with
    appended per-sample rows (Opacus clips them) and once sparsely; the parameters after the step
    agree (float summation order aside), and each canary's coordinate moved by Opacus' clip factor
    of a row of norm C times C (norm 2.5 > the optimizer's max_grad_norm 1.0: the canary is clipped
    to 1.0, as a real example would be). Bugs caught: the sparse path skipping the clip factor
    (a canary of norm 2.5 would move its coordinate by 2.5), adding after the noise/scaling
    (wrong divisor), adding on every step regardless of sampling, or missing the empty batch."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    import dp_audit.trainers.dirac as dirac_mod

    results = {}
    for mode in ("dense", "sparse"):
        monkeypatch.setattr(dirac_mod, "DENSE_LIMIT", 1 << 40 if mode == "dense" else 0)
        model, can = _canaries(m=20, norm=norm, q=1.0)
        torch.nn.init.constant_(model.head.weight, 0.1)
        gsm = GradSampleModule(model.embeddings.position_embeddings, loss_reduction="sum")
        params = [p for p in gsm.parameters()]
        opt = DPOptimizer(torch.optim.SGD(params, lr=1.0), noise_multiplier=0.0, max_grad_norm=1.0,
                          expected_batch_size=4, loss_reduction="sum")
        hook = can.hook(params, torch.Generator().manual_seed(0), optimizer=opt)
        assert can.dense() == (mode == "dense")
        before = params[0].detach().clone()
        for real in (True, False):  # a step with a real batch, then an empty batch (noise-only step)
            opt.zero_grad(set_to_none=True)
            if real:
                out = gsm(torch.tensor([0, 1, 2, 3]))
                (out * 3.0).sum().backward()  # per-sample norm 3·√5 > 1: clipped
                hook(0, 4)
            else:
                for p in params:
                    p.grad_sample = p.new_zeros((0, *p.shape))
                hook(1, 0)
            opt.step()
        results[mode] = (before - params[0].detach(), can)  # the update (the init is not seeded)
    (dense, can), (sparse, _) = results["dense"], results["sparse"]
    assert torch.allclose(dense, sparse, rtol=0, atol=1e-6)
    moved = sparse.reshape(-1)[torch.as_tensor(can.index)]
    c = torch.tensor(norm)
    factor = float((1.0 / (c + 1e-6)).clamp(max=1.0) * c)  # per step (loss reduction "sum": no divisor)
    expect = torch.as_tensor(can.member, dtype=torch.float32) * 2 * factor  # members: in both steps (q = 1)
    assert torch.allclose(moved, expect, rtol=1e-5, atol=1e-7)
    assert float(moved.max()) <= 2 * 1.0 + 1e-6  # never more than the clip norm per step


def test_position_table_size_gives_room_for_many_canaries_and_is_validated():
    """``model.max_position_embeddings`` sizes the position table (room for 10⁵ canaries past
    data.max_length) and is part of the backbone's cache key. Bugs caught: the option ignored by
    the backbone (the table stays 64 rows: m = 10⁵ refused mid-run), a table smaller than the
    inputs' positions accepted, two table sizes sharing one cached backbone."""
    from dp_audit.config import DataConfig, ModelConfig, run_config_from_dict
    from dp_audit.errors import UsageError
    from dp_audit.trainers.backbone import backbone_key, bert_config

    data = DataConfig(max_length=32)
    big = ModelConfig(hidden_size=32, max_position_embeddings=3157)
    assert bert_config(big, data, 100).max_position_embeddings == 3157
    assert bert_config(ModelConfig(hidden_size=32), data, 100).max_position_embeddings == 64
    assert (3157 - 32) * 32 >= 100_000
    assert backbone_key(big, data, 100) != backbone_key(ModelConfig(hidden_size=32), data, 100)
    for bad in (39, -1):
        with pytest.raises(UsageError, match="max_position_embeddings"):
            run_config_from_dict({"data": {"max_length": 32}, "model": {"max_position_embeddings": bad}})
