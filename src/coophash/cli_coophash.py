"""CLI commands of CoopHash (added to the `coophash` group on import)."""
from coophash.cli import cli  # noqa: F401
