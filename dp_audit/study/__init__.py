"""``dp-audit study awp-leak``: the study of issue 17 as one resumable command (docs/awp-leak.md).

- :mod:`.arms` the arms (trainer configs and the step-level constructions that match them) and sweeps;
- :mod:`.row` the frozen result of one arm / sweep point and its hash-checked ``result.json``;
- :mod:`.store` the study directory: which results are valid, atomic writes, output safety;
- :mod:`.runner` runs an arm (train_run -> run_audit -> evaluate_gate, and step_audit);
- :mod:`.conclusion` the conclusion, computed from the rows only;
- :mod:`.render` study.json, study.md and study.html.

Nothing here imports torch at import time.
"""

from dp_audit.study.arms import Arm, SweepPoint, awp_leak_arms, awp_leak_sweeps
from dp_audit.study.conclusion import conclusion
from dp_audit.study.row import ArmRow, SweepRow
from dp_audit.study.runner import run_study

__all__ = ["Arm", "ArmRow", "SweepPoint", "SweepRow", "awp_leak_arms", "awp_leak_sweeps", "conclusion", "run_study"]
