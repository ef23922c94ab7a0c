"""Dirac gradient canaries: the run-directory record (docs/whitebox.md, docs/formats.md).

A run trained with ``canaries.gradient = m`` (DP-SGD, full fine-tuning) holds two extra hashed
artifacts:

- ``dirac_canaries.json``: which parameter holds the canary coordinates, the per-sample gradient
  norm C of every canary, the Poisson rate q it was sampled at, and one entry per canary
  ``{"id", "index", "member"}`` (``index`` = flat coordinate in that parameter; ``member`` drawn
  Bernoulli(1/2) from a seeded generator, like the text canaries);
- ``dirac_w0.safetensors``: that parameter's initial value w_0 (tensor ``w0``), saved by the trainer
  right before the first step;
- DP-Flat only (its canaries live in a dedicated audit parameter outside the PEFT adapter):
  ``dirac_wT.safetensors``, that parameter's final value (tensor ``w``), named in the record as
  ``"final": {"file", "tensor"}``. Without ``final`` the final value is the tensor ``parameter``
  of ``model/model.safetensors`` (DP-SGD, full fine-tuning).

This module is plain data (numpy, no torch): the trainer writes it with :func:`record`, the
white-box attack (:mod:`dp_audit.attacks.dirac`) reads it with :func:`read_record`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dp_audit.errors import IntegrityError

RECORD = "dirac_canaries.json"
W0 = "dirac_w0.safetensors"
WT = "dirac_wT.safetensors"  # the final audit parameter of a DP-Flat run (tensor "w")
KIND = "dirac-gradient"
# the membership stream of Dirac canaries: canaries.seed, spawned apart from the text canaries'
MEMBERSHIP_STREAM = 0xD12AC


def membership(m: int, *, seed: int) -> np.ndarray:
    """Bernoulli(1/2) membership of m Dirac canaries from ``canaries.seed`` (its own stream)."""
    return np.random.default_rng([int(seed), MEMBERSHIP_STREAM]).random(m) < 0.5


@dataclass(frozen=True)
class DiracRecord:
    parameter: str
    shape: tuple[int, ...]
    norm: float
    sample_rate: float
    index: np.ndarray  # flat coordinate of each canary
    member: np.ndarray
    ids: tuple[str, ...]
    final_file: str | None = None  # the file holding the final parameter (None: model/model.safetensors)
    final_tensor: str | None = None  # its tensor name in that file (None: ``parameter``)

    @property
    def m(self) -> int:
        return int(self.index.size)


def record(*, parameter: str, shape: tuple[int, ...], norm: float, sample_rate: float, index: np.ndarray,
           member: np.ndarray, seed: int, where: str, final: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON object of ``dirac_canaries.json`` (``final``: ``{"file", "tensor"}`` of the final
    parameter when it is not in ``model/model.safetensors``)."""
    return {"kind": KIND, **({"final": dict(final)} if final else {}), "parameter": parameter,
            "shape": [int(s) for s in shape], "norm": float(norm),
            "sample_rate": float(sample_rate), "seed": int(seed), "coordinates": where,
            "gradient": "+norm · e_index on the parameter, zero elsewhere (per-sample, before clipping)",
            "canaries": [{"id": f"g{i:05d}", "index": int(j), "member": bool(b)}
                         for i, (j, b) in enumerate(zip(index, member))]}


def read_record(obj: Any, *, where: str) -> DiracRecord:
    """Validate a ``dirac_canaries.json`` object (IntegrityError on anything malformed)."""
    try:
        if obj.get("kind") != KIND:
            raise ValueError(f"kind must be {KIND!r}")
        shape = tuple(int(s) for s in obj["shape"])
        size = int(np.prod(shape))
        rows = obj["canaries"]
        index = np.array([int(c["index"]) for c in rows], dtype=np.int64)
        member = np.array([c["member"] for c in rows])
        if member.dtype != bool:
            raise ValueError("'member' must be true or false")
        ids = tuple(str(c["id"]) for c in rows)
        norm, rate = float(obj["norm"]), float(obj["sample_rate"])
        if not (index.size and (index >= 0).all() and (index < size).all() and np.unique(index).size == index.size):
            raise ValueError("indices must be distinct coordinates of the parameter")
        if not (norm > 0 and 0 < rate <= 1):
            raise ValueError("need norm > 0 and 0 < sample_rate <= 1")
        final = obj.get("final")
        if final is not None:
            if not (isinstance(final, dict) and final.get("file") == WT and isinstance(final.get("tensor"), str)):
                raise ValueError(f"'final' must be {{\"file\": {WT!r}, \"tensor\": name}}")
        return DiracRecord(parameter=str(obj["parameter"]), shape=shape, norm=norm, sample_rate=rate,
                           index=index, member=member, ids=ids,
                           final_file=None if final is None else WT,
                           final_tensor=None if final is None else str(final["tensor"]))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{where}: bad Dirac canary record ({exc})") from None


def has_dirac(run_dir: str | Path, manifest: dict[str, Any]) -> bool:
    """Whether a run directory holds Dirac gradient canaries (recorded in its manifest)."""
    return RECORD in (manifest.get("artifacts") or {}) and (Path(run_dir) / RECORD).is_file()
