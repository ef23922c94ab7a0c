"""No statistic of the private data is released unlisted (issue 12 item 6).

metrics.json and the manifest's ``notes.metrics`` hold only values of the final model on the
held-out dev/test splits (post-processing of the released model) and data-independent counts.
Training losses and DP-ZO's clipped fraction are computed on the private split without noise:
they are written only with ``privacy.release_training_stats = true``, and then each one is listed
in the ledger's and the claim's ``unaccounted`` list (so the cross-check and the report show it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dp_audit.accounting import cross_check
from dp_audit.trainers.base import PRIVATE_METRIC_KEYS

# values that are post-processing of the released model on held-out data, or data-independent
POST_PROCESSING = {"test_accuracy", "test_loss", "dev_accuracy", "dev_loss", "steps"}
PREFIX = {"tuning": "prefix", "num_virtual_tokens": 4}
TRAINERS = {
    "dpsgd": {"trainer": "dpsgd"},
    "dpzo": {"trainer": "dpzo", "model": PREFIX, "dpzo": {"steps": 6}},
    "dpflat": {"trainer": "dpflat", "model": PREFIX, "dpflat": {"awp": False, "sparse": False, "distill": False}},
    "nondp": {"trainer": "nondp"},
}


def _read(run: Path) -> tuple[dict, dict, dict]:
    load = lambda name: json.loads((run / name).read_text())  # noqa: E731
    return load("metrics.json"), load("ledger.json"), load("manifest.json")


def _listed(entries) -> set[str]:
    return {u["component"].removeprefix("metric:") for u in entries if u["component"].startswith("metric:")}


def _check_release(run: Path) -> tuple[set[str], dict]:
    """Every released metric is post-processing or listed as unaccounted, in metrics.json and in
    the manifest, by the ledger and by the claim. Returns the private keys released."""
    metrics, ledger, man = _read(run)
    released = set(metrics) | set(man["notes"]["metrics"])
    private = released - POST_PROCESSING
    assert private <= _listed(ledger["unaccounted"]), (private, ledger["unaccounted"])
    assert private <= _listed(man["claim"]["unaccounted"])
    assert {"dev_loss", "test_accuracy"} <= set(metrics)
    return private, ledger


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_metrics_from_private_data_are_not_released_by_default(trainer, tiny_config, tmp_path):
    """Plausible bugs: final_train_loss / clipped_fraction written to metrics.json and the manifest
    without an unaccounted entry (today's code, every trainer; DP-Flat still puts final_train_loss
    in its metrics, which the release policy must catch)."""
    from dp_audit.trainers.base import train_run

    run = train_run(tiny_config(canaries={"m": 10}, **TRAINERS[trainer]), tmp_path / trainer, progress=False)
    private, ledger = _check_release(run)
    assert private == set()
    assert not _listed(ledger["unaccounted"])


@pytest.mark.parametrize("trainer", ["dpsgd", "dpzo"])
def test_released_training_statistics_are_each_listed_as_unaccounted(trainer, tiny_config, tmp_path):
    """With privacy.release_training_stats the statistics are written and each one is listed, so
    the accounting cross-check flags the run. Plausible bugs: the switch releases them unlisted;
    it lists them in the ledger but not in the claim; DP-ZO's clipped_fraction forgotten."""
    from dp_audit.trainers.base import train_run

    sections = {**TRAINERS[trainer], "privacy": {"release_training_stats": True}}
    run = train_run(tiny_config(canaries={"m": 10}, **sections), tmp_path / trainer, progress=False)
    private, ledger = _check_release(run)
    expect = {"final_train_loss", "clipped_fraction"} if trainer == "dpzo" else {"final_train_loss"}
    assert private == expect and expect <= set(PRIVATE_METRIC_KEYS)
    metrics, _, man = _read(run)
    check = cross_check(ledger, claimed_epsilon=man["claim"]["epsilon"], delta=man["claim"]["delta"])
    assert not check["consistent"]
    assert any(f.startswith("unaccounted: metric:final_train_loss") for f in check["flags"])


def _keys(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{prefix}{k}"
            yield from _keys(v, f"{prefix}{k}.")


@pytest.mark.parametrize("mode, blackbox", [("paper", False), ("public", False), ("paper", True)])
def test_dpflat_notes_release_no_loss_of_private_data(mode, blackbox, tiny_config, tmp_path):
    """Bug caught: DP-Flat's manifest notes carried the training loss of the selection prefix, the
    teacher P_np and the black-box ZO reference, computed without noise on the private split in
    paper mode (only a public-split loss may be written)."""
    from dp_audit.trainers.base import train_run

    dpflat = {"awp": False, "sparse": not blackbox, "distill": True, "sparse_mode": mode, "distill_mode": mode,
              "distill_epochs": 1, "sparse_reference_epochs": 1, "blackbox": blackbox}
    sections = {"trainer": "dpflat", "model": PREFIX, "dpflat": dpflat, **({"dpzo": {"steps": 4}} if blackbox else {})}
    run = train_run(tiny_config(canaries={"m": 10}, **sections), tmp_path / "r", progress=False)
    _, _, man = _read(run)
    losses = [k for k in _keys(man["notes"]) if "loss" in k and not k.startswith(("metrics.dev", "metrics.test"))]
    if mode == "paper":
        assert losses == [], losses
    else:
        assert losses, "a public-split training loss may be written and should be"
