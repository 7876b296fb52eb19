"""CLI commands of fake-image regularised hashing (added to the `coophash` group on import)."""
from coophash.cli import cli  # noqa: F401
