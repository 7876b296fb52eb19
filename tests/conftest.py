"""Test session settings: OpenMP threads must not spin on this 2-core machine (DESIGN.md §6)."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# A tiny protocol and base config on scikit-learn's digits, shared by the GAN-stage tests.
TINY_PROTOCOL = {"query_per_class": 10, "val_per_class": 10}


def tiny_base_cfg(tmp_path, **kw):
    """A 1-epoch digits config (seed 3, half the labels) for GAN-stage tests; ``kw`` overrides fields."""
    from coophash.config import TrainConfig

    d = {"dataset": "digits", "protocol_args": TINY_PROTOCOL, "bits": 16, "epochs": 1, "batch_size": 64, "seed": 3,
         "label_fraction": 0.5, "out": str(tmp_path), "checkpoint_every": 1000}
    d.update(kw)
    return TrainConfig.from_dict(d)
