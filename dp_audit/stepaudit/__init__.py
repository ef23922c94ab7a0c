"""Step-level audit of a training mechanism (DESIGN.md §0, §7; docs/awp-leak.md).

>>> from dp_audit.stepaudit import Construction, gaussian_claim, step_audit
>>> res = step_audit(Construction(name=..., step_fn=..., state=..., d0=..., d1=..., statistic=...,
...                               description=..., **gaussian_claim(mu, delta)), trials=10_000, alpha=0.05, seed=0)
>>> res.eps_lb, res.refuted

Built-in constructions (real trainer code paths on a small synthetic model) are in
:mod:`dp_audit.stepaudit.constructions`; they import torch, this package does not.
"""

from dp_audit.stepaudit.audit import counted_methods, step_audit
from dp_audit.stepaudit.construction import Construction, gaussian_claim
from dp_audit.stepaudit.output import read_step_audit, write_step_audit
from dp_audit.stepaudit.result import StepAuditResult, summary_line

__all__ = ["Construction", "StepAuditResult", "counted_methods", "gaussian_claim", "read_step_audit",
           "step_audit", "summary_line", "write_step_audit"]
