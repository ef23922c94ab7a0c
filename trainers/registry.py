"""Imports every trainer module so that ``TRAINERS`` lists them all."""

from dp_audit.trainers import dpflat, dpsgd, dpzo, nondp  # noqa: F401
from dp_audit.trainers.base import TRAINERS

__all__ = ["TRAINERS"]
