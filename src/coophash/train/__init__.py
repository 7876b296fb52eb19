"""Training: the shared phase-driven loop, checkpoints and run folders."""
