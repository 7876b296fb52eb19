"""Test session settings: OpenMP threads must not spin on this 2-core machine (DESIGN.md §6)."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
