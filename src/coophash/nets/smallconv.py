"""A small, fast conv trunk for 8–64 px images (MNIST, scikit-learn digits, CIFAR-size crops), and its wide form.

``wideconv`` is the same layout with every stage ``width`` times wider (default 4): many more parameters on
the same images, the over-fitting regime of the fake-image regulariser (issue 12).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from coophash.nets.registry import register_backbone

__all__ = ["SmallConv", "default_widths", "smallconv", "smallconv_nobn", "wideconv", "WIDECONV_WIDTH"]

#: Default width multiplier of ``wideconv`` (28 px: stages of 128 and 256 channels, about 6x smallconv's
#: parameters and about 15x its multiply-adds).
WIDECONV_WIDTH = 4


def default_widths(image_size: int) -> tuple[int, ...]:
    """Stage widths: two stages up to 32 px, one more per doubling of the side beyond that."""
    widths = [32, 64]
    size = 32
    while image_size > size:
        widths.append(min(widths[-1] * 2, 256))
        size *= 2
    return tuple(widths)


class SmallConv(nn.Module):
    """Stages of [conv3x3-norm-act] x ``convs_per_stage`` + 2x2 max pool, then a linear to ``num_features``.

    Defaults: widths 32, 64 (plus 128, 256 for each doubling of the side beyond 32 px); one conv in
    the first, full-resolution stage and two in each later stage (about half the cost of two
    everywhere, for a similar accuracy on MNIST).

    A stage pools only while its input side is at least 4 px, so the map never falls below 2 px
    (at 8 px: 8 -> 4 -> 2; at 28 px: 28 -> 14 -> 7). The last map is average-pooled to at most
    ``grid`` x ``grid`` cells, flattened, and projected to ``num_features`` (norm + act applied).
    ``pool`` picks 2x2 max or average pooling. ``norm="batch"`` uses BatchNorm + ReLU; ``norm="none"`` uses no normalisation and leaky ReLU
    (``negative_slope``), the form an energy-based descriptor needs; ``norm="group"`` is ``none`` plus per-sample
    normalisation (GroupNorm of up to 8 groups after every conv, LayerNorm after the linear), which couples no
    two images of a batch; ``spectral_norm=True`` wraps
    every conv and linear weight in spectral normalisation.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        widths: Sequence[int] | None = None,
        convs_per_stage: int | Sequence[int] | None = None,
        num_features: int = 256,
        norm: str = "batch",
        pool: str = "max",
        negative_slope: float = 0.2,
        spectral_norm: bool = False,
        grid: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "none", "group"):
            raise ValueError(f"norm must be 'batch', 'none' or 'group', got {norm!r}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        if image_size < 2:
            raise ValueError(f"image_size must be >= 2 px for smallconv, got {image_size}")
        widths = tuple(widths) if widths is not None else default_widths(image_size)
        if not widths:
            raise ValueError("widths must name at least one stage")
        if convs_per_stage is None:
            convs = (1,) + (2,) * (len(widths) - 1)
        elif isinstance(convs_per_stage, int):
            convs = (convs_per_stage,) * len(widths)
        else:
            convs = tuple(convs_per_stage)
        if len(convs) != len(widths) or min(convs) < 1:
            raise ValueError(
                f"convs_per_stage must be >= 1 per stage ({len(widths)} stages), got {convs_per_stage}"
            )
        self.in_channels = in_channels
        self.image_size = image_size
        self.norm = norm
        self.num_features = num_features

        use_bn = norm == "batch"

        def wrap(layer: nn.Module) -> nn.Module:
            return _spectral_norm(layer) if spectral_norm else layer

        def act() -> nn.Module:
            return nn.ReLU(inplace=True) if use_bn else nn.LeakyReLU(negative_slope, inplace=True)

        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for width, n_convs in zip(widths, convs):
            for _ in range(n_convs):
                layers.append(wrap(nn.Conv2d(channels, width, 3, padding=1, bias=not use_bn)))
                if use_bn:
                    layers.append(nn.BatchNorm2d(width))
                elif norm == "group":
                    layers.append(nn.GroupNorm(min(8, width), width))
                layers.append(act())
                channels = width
            if size >= 4:
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        cells = max(1, min(grid, size))
        self.grid_pool = nn.AdaptiveAvgPool2d(cells)
        head: list[nn.Module] = [
            nn.Flatten(),
            wrap(nn.Linear(channels * cells * cells, num_features, bias=not use_bn)),
        ]
        if use_bn:
            head.append(nn.BatchNorm1d(num_features))
        elif norm == "group":
            head.append(nn.LayerNorm(num_features))
        head.append(act())
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        """Map images (N, C, H, W) in [-1, 1] to features (N, num_features)."""
        return self.head(self.grid_pool(self.features(x)))


@register_backbone("smallconv")
def smallconv(in_channels: int = 1, image_size: int = 28, **kw: object) -> SmallConv:
    """Small conv trunk with batch norm and ReLU (the default for 8–32 px images)."""
    kw.setdefault("norm", "batch")
    return SmallConv(in_channels=in_channels, image_size=image_size, **kw)  # type: ignore[arg-type]


@register_backbone("smallconv-nobn")
def smallconv_nobn(in_channels: int = 1, image_size: int = 28, **kw: object) -> SmallConv:
    """Small conv trunk with no normalisation, leaky ReLU 0.2 and average pooling (CoopHash descriptor).

    Average pooling (as in IGEBM) passes a gradient to every pixel, which suits Langevin revision.
    """
    kw.setdefault("norm", "none")
    kw.setdefault("pool", "avg")
    kw.setdefault("negative_slope", 0.2)
    return SmallConv(in_channels=in_channels, image_size=image_size, **kw)  # type: ignore[arg-type]


@register_backbone("smallconv-gn")
def smallconv_gn(in_channels: int = 1, image_size: int = 28, **kw: object) -> SmallConv:
    """``smallconv-nobn`` with per-sample normalisation: GroupNorm after each conv, LayerNorm after the linear.

    The trunk CoopHash's descriptor builds with ``coop_trunk_norm: group`` (same layers, same order), so a
    baseline on it measures accuracy and cost on the descriptor's own trunk.
    """
    kw.setdefault("norm", "group")
    kw.setdefault("pool", "avg")
    kw.setdefault("negative_slope", 0.2)
    return SmallConv(in_channels=in_channels, image_size=image_size, **kw)  # type: ignore[arg-type]


@register_backbone("wideconv")
def wideconv(in_channels: int = 1, image_size: int = 28, width: float = WIDECONV_WIDTH, **kw: object) -> SmallConv:
    """``smallconv`` with every stage ``width`` times wider (batch norm, ReLU; default 4).

    Stage widths are ``round(width * w)`` of smallconv's (or of ``widths`` when given); the other options
    (``convs_per_stage``, ``num_features``, ``grid``, ``dropout``, ...) are smallconv's.  ``width=1`` is smallconv.
    """
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"wideconv width must be a positive number, got {width!r}")
    base = kw.pop("widths", None)
    base = tuple(base) if base is not None else default_widths(image_size)  # type: ignore[call-overload]
    kw.setdefault("norm", "batch")
    widths = tuple(max(1, round(float(width) * w)) for w in base)
    return SmallConv(in_channels=in_channels, image_size=image_size, widths=widths, **kw)  # type: ignore[arg-type]
