import numpy as np
import pytest

from dp_audit.attacks.base import ATTACKS, make_attack
from dp_audit.attacks.loading import load_hf_model
from dp_audit.attacks.metrics import attack_metrics
from dp_audit.attacks.signals import Signals
from dp_audit.errors import UsageError


def test_metrics_match_hand_computed_roc():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    member = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)
    r = attack_metrics("x", scores, member, scores_file="s.npz", rng=np.random.default_rng(0))
    # pairs (member, non-member) ranked correctly: 4+4+3+1 = 12 of 16
    assert r.auc == pytest.approx(12 / 16)
    assert r.tpr_at_fpr["0.01"] == pytest.approx(0.5)  # two members above every non-member
    lo, hi = r.auc_ci
    assert lo <= r.auc <= hi
    with pytest.raises(UsageError, match="NaN"):
        attack_metrics("x", [0.1, np.nan], [True, False], scores_file="s", rng=np.random.default_rng(0))


def test_every_registered_attack_is_finite_and_points_the_right_way():
    rng = np.random.default_rng(1)
    member = rng.random(400) < 0.5
    loss = np.where(member, rng.exponential(0.1, 400), rng.exponential(1.0, 400))
    for name in ATTACKS:
        attack = make_attack(name)
        if getattr(attack, "needs_reference", 0) or set(attack.requires) != {"loss"}:
            continue  # reference and LM attacks: tests/test_attack_contracts.py
        s = attack.fit(None).score_samples(Signals(loss=loss))
        assert s.shape == (400,) and np.all(np.isfinite(s))
        assert attack_metrics(name, s, member, scores_file="s", rng=rng).auc > 0.7
        assert np.array_equal(s, attack.score_samples(Signals(loss=loss)))


def test_loader_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_hf_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="config.json"):
        load_hf_model(tmp_path / "empty")


def test_bootstrap_auc_ci_equals_the_roc_auc_score_replicates():
    """The bootstrap AUC is the area under each replicate's ROC (one roc_curve per replicate, not
    two sklearn calls: review of issue 16, test time); it must equal roc_auc_score replicate by
    replicate, ties included. Bugs caught: the area taken with swapped axes (auc(tpr, fpr)) or on
    the full-data curve instead of the replicate's."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    member = rng.random(60) < 0.5
    scores = np.round(rng.normal(size=60) + member, 1)  # ties
    r = attack_metrics("x", scores, member, scores_file="s.npz", rng=np.random.default_rng(7), n_bootstrap=50)
    g = np.random.default_rng(7)
    pos, neg = np.flatnonzero(member), np.flatnonzero(~member)
    ref = []
    for _ in range(50):
        idx = np.concatenate([g.choice(pos, pos.size), g.choice(neg, neg.size)])
        ref.append(roc_auc_score(member[idx], scores[idx]))
    assert r.auc_ci == (float(np.quantile(ref, 0.025)), float(np.quantile(ref, 0.975)))
