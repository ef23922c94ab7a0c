"""dp-audit: empirical privacy audits of differentially private training.

The core package never imports torch at import time (DESIGN.md §1); trainers, attacks and
landscapes do, and are imported lazily by the CLI.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1

__all__ = ["__version__", "SCHEMA_VERSION"]
