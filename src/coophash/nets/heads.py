"""Linear heads on pooled trunk features: the hash head (pre-activation) and the category head."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["HashHead", "CategoryHead"]


class HashHead(nn.Module):
    """Linear map from features to K pre-activations; the caller takes ``u = tanh(pre)``."""

    def __init__(self, in_features: int, nbits: int) -> None:
        super().__init__()
        if nbits < 1:
            raise ValueError(f"nbits must be >= 1, got {nbits}")
        self.nbits = nbits
        self.fc = nn.Linear(in_features, nbits)

    def forward(self, features: Tensor) -> Tensor:
        """Return the pre-activation (N, nbits)."""
        return self.fc(features)


class CategoryHead(nn.Module):
    """Linear map from features to class logits (N, n_classes)."""

    def __init__(self, in_features: int, n_classes: int) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = n_classes
        self.fc = nn.Linear(in_features, n_classes)

    def forward(self, features: Tensor) -> Tensor:
        """Return class logits (N, n_classes)."""
        return self.fc(features)
