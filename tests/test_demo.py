"""`dp-audit demo`'s scenarios are valid configs (a typo would otherwise surface minutes into
`make demo`), and the DP ones train with DP while the baseline does not."""

from __future__ import annotations

import pytest

from dp_audit.commands.demo import BASE, SCENARIOS, _merge
from dp_audit.config import run_config_from_dict


@pytest.mark.parametrize("name,spec", SCENARIOS, ids=[n for n, _ in SCENARIOS])
def test_every_scenario_is_a_valid_config(name, spec):
    cfg = run_config_from_dict(_merge(_merge(BASE, spec), {"name": name}))
    assert cfg.privacy.epsilon == 1.0 and cfg.canaries.m > 0
    if cfg.trainer == "nondp":
        assert cfg.privacy.claimed_epsilon == 1.0  # a false claim for the gate to refute
    else:
        assert cfg.trainer in ("dpsgd", "dpflat")


def test_the_demo_audit_config_is_valid():
    from dp_audit.commands.demo import AUDIT
    from dp_audit.config import AuditConfig, from_mapping

    cfg = from_mapping(AuditConfig, AUDIT)
    assert cfg.probes == ("curve-filter",) and cfg.attacks == ("loss",)
    assert cfg.fdp_null == "eps-delta"  # the valid default (docs/estimators.md)
