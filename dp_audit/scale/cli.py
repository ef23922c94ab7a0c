"""The scale-out options of the commands: --backend, --workers, --ray-address."""

from __future__ import annotations

import argparse
import dataclasses

from dp_audit.errors import UsageError
from dp_audit.scale.config import BACKENDS, ScaleConfig


def add_arguments(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group(f"scale-out of independent tasks ({what}; docs/scale-out.md)")
    g.add_argument("--backend", choices=BACKENDS, help="local (process pool) | ray")
    g.add_argument("--workers", type=int, help="worker processes, or CPUs of a local Ray (default: every core)")
    g.add_argument("--ray-address", help="join this Ray cluster (e.g. auto or ray://head:10001); implies --backend ray")


def from_args(args: argparse.Namespace, base: ScaleConfig | None) -> ScaleConfig | None:
    """``base`` (a config's [scale], or None) overridden by the options given; None if neither."""
    if args.ray_address is not None and args.backend not in (None, "ray"):
        raise UsageError("--ray-address needs --backend ray")
    changes = {}
    if args.ray_address is not None:
        changes.update(backend="ray", ray_address=args.ray_address)
    if args.backend is not None:
        changes["backend"] = args.backend
    if args.workers is not None:
        changes["workers"] = args.workers
    if not changes:
        return base
    return dataclasses.replace(base or ScaleConfig(), **changes)
