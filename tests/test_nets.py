"""Tests for coophash.nets: registry-wide forward/backward, torchvision key layout, pretrained loading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from coophash.nets import (
    BACKBONES,
    HashingNet,
    HashOutput,
    create_backbone,
    create_hashing_net,
    default_backbone,
    list_backbones,
    load_pretrained,
    register_backbone,
)

# Valid (in_channels, image_size, extra kwargs) per registered backbone; every registered name must appear.
CASES: dict[str, list[tuple[int, int, dict]]] = {
    "smallconv": [(1, 8, {}), (3, 8, {}), (1, 28, {}), (3, 28, {}), (1, 32, {}), (3, 32, {}), (3, 64, {})],
    "smallconv-nobn": [
        (1, 8, {}),
        (3, 8, {}),
        (1, 28, {}),
        (3, 32, {}),
        (1, 64, {}),
        (3, 64, {"spectral_norm": True}),
    ],
    "smallconv-gn": [(1, 8, {}), (3, 8, {}), (1, 28, {}), (3, 32, {"spectral_norm": True})],
    "resnet18": [(3, 32, {}), (1, 32, {}), (3, 32, {"small_input": False}), (3, 64, {}), (1, 28, {})],
    "wideconv": [(1, 8, {}), (1, 28, {}), (3, 32, {"width": 2}), (1, 28, {"width": 1.5, "dropout": 0.1})],
}
PARAMS = [
    pytest.param(name, c, s, kw, id=f"{name}-c{c}-{s}px" + "".join(f"-{k}={v}" for k, v in kw.items()))
    for name, cases in CASES.items()
    for c, s, kw in cases
]


def test_every_registered_backbone_is_covered() -> None:
    assert set(list_backbones()) == set(CASES)
    assert list_backbones() == sorted(BACKBONES)


@pytest.mark.parametrize(("name", "channels", "size", "kw"), PARAMS)
def test_forward_backward(name: str, channels: int, size: int, kw: dict) -> None:
    torch.manual_seed(0)
    nbits, n_classes, batch = 12, 5, 2
    net = create_hashing_net(name, nbits=nbits, n_classes=n_classes, in_channels=channels, image_size=size, **kw)
    x = torch.rand(batch, channels, size, size) * 2 - 1
    out = net(x)
    assert isinstance(out, HashOutput)
    assert out.features.shape == (batch, net.num_features)
    assert out.pre.shape == (batch, nbits) and out.u.shape == (batch, nbits)
    assert out.logits is not None and out.logits.shape == (batch, n_classes)
    assert torch.equal(out.u, torch.tanh(out.pre))
    assert bool(((out.u > -1) & (out.u < 1)).all())
    for t in (out.features, out.pre, out.u, out.logits):
        assert torch.isfinite(t).all()
    (out.u.pow(2).sum() + out.logits.logsumexp(1).sum()).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in net.backbone.parameters())
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net.encode(x), net(x).u)


def test_hash_output_fields_and_select() -> None:
    from dataclasses import fields

    assert [f.name for f in fields(HashOutput)] == ["features", "pre", "u", "logits"]
    out = HashOutput(torch.arange(6.0).view(3, 2), torch.zeros(3, 4), torch.ones(3, 4))
    assert out.logits is None
    part = out.select(torch.tensor([True, False, True]))
    assert part.features.tolist() == [[0.0, 1.0], [4.0, 5.0]] and part.u.shape == (2, 4) and part.logits is None


def test_hashing_net_without_category_head() -> None:
    torch.manual_seed(0)
    net = create_hashing_net("smallconv", nbits=16, n_classes=None, image_size=8)
    out = net(torch.zeros(2, 1, 8, 8))
    assert out.logits is None and net.category_head is None and net.n_classes is None
    assert net.nbits == 16 and out.u.shape == (2, 16)


def test_nobn_has_no_batch_norm_and_leaky_relu() -> None:
    net = create_backbone("smallconv-nobn", in_channels=3, image_size=32, spectral_norm=True)
    kinds = {type(m) for m in net.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert nn.ReLU not in kinds and nn.MaxPool2d not in kinds and nn.AvgPool2d in kinds
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    assert any("parametrizations" in n for n, _ in net.named_parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in create_backbone("smallconv").modules())


def test_smallconv_gn_is_the_descriptor_trunk_with_group_norm() -> None:
    """smallconv-gn has the very layers (names, order, shapes) of CoopHash's trunk under trunk_norm='group'."""
    from coophash.nets.descriptor import MultipurposeDescriptor

    torch.manual_seed(0)
    desc = MultipurposeDescriptor(1, 28, nbits=16, n_classes=10, trunk_norm="group")
    net = create_backbone("smallconv-gn", in_channels=1, image_size=28)
    want = {k: v.shape for k, v in desc.trunk.state_dict().items()}
    assert {k: v.shape for k, v in net.state_dict().items()} == want
    assert [type(m) for m in net.modules()][1:] == [type(m) for m in desc.trunk.modules()][1:]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in net.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    net.load_state_dict(desc.trunk.state_dict())
    x = torch.randn(4, 1, 28, 28)
    net.eval(), desc.eval()
    torch.testing.assert_close(net(x), desc.trunk(x))
    # per-sample normalisation: an image's features do not depend on the rest of the batch, in train mode too
    net.train()
    torch.testing.assert_close(net(x)[:1], net(x[:1]))


def test_descriptor_group_trunk_keeps_its_checkpoint_layout() -> None:
    """Checkpoints of trunk_norm='group' runs load: the trunk's parameter names are those it always had (conv,
    GroupNorm, act, pool per stage; flatten, linear, LayerNorm, act in the head)."""
    from coophash.nets.descriptor import MultipurposeDescriptor

    desc = MultipurposeDescriptor(1, 28, nbits=16, n_classes=10, trunk_norm="group")
    assert list(desc.trunk.state_dict()) == [
        f"{part}.{i}.{w}" for part, i in [("features", 0), ("features", 1), ("features", 4), ("features", 5),
                                          ("features", 7), ("features", 8), ("head", 1), ("head", 2)]
        for w in ("weight", "bias")
    ]
    assert [type(m) for m in desc.trunk.features][:4] == [nn.Conv2d, nn.GroupNorm, nn.LeakyReLU, nn.AvgPool2d]


def test_descriptor_group_norm_needs_a_smallconv_trunk() -> None:
    from coophash.nets.descriptor import MultipurposeDescriptor

    with pytest.raises(ValueError, match="trunk_norm='group' needs a smallconv trunk"):
        MultipurposeDescriptor(1, 28, nbits=16, n_classes=10, backbone="resnet18", trunk_norm="group")


def test_smallconv_rejects_unknown_norm() -> None:
    with pytest.raises(ValueError, match="norm must be 'batch', 'none' or 'group'"):
        create_backbone("smallconv", norm="layer")


def test_smallconv_pools_adapt_to_image_size() -> None:
    def pools(size: int) -> int:
        return sum(isinstance(m, nn.MaxPool2d) for m in create_backbone("smallconv", image_size=size).modules())

    assert pools(8) == 2 and pools(28) == 2 and pools(64) == 3 and pools(3) == 0


def test_default_backbone_and_small_input() -> None:
    assert default_backbone(8) == default_backbone(32) == "smallconv"
    assert default_backbone(33) == default_backbone(224) == "resnet18"
    assert create_backbone("resnet18", 3, 32).conv1.kernel_size == (3, 3)
    big = create_backbone("resnet18", 3, 64)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert isinstance(create_hashing_net(None, image_size=64, in_channels=3).backbone, type(big))


def test_registry_errors() -> None:
    with pytest.raises(KeyError, match="smallconv"):
        create_backbone("no-such-net")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("smallconv")(lambda **kw: nn.Identity())


def torchvision_resnet18_keys() -> list[str]:
    """The torchvision resnet18 state-dict keys without fc, built from the architecture's rule."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for layer in range(1, 5):
        for block in (0, 1):
            prefix = f"layer{layer}.{block}"
            keys += [f"{prefix}.conv1.weight"] + [f"{prefix}.bn1.{s}" for s in bn]
            keys += [f"{prefix}.conv2.weight"] + [f"{prefix}.bn2.{s}" for s in bn]
            if layer > 1 and block == 0:
                keys += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{s}" for s in bn]
    return keys


def test_resnet18_matches_torchvision_layout() -> None:
    net = create_backbone("resnet18", in_channels=3, image_size=224)
    state = net.state_dict()
    expected = torchvision_resnet18_keys()
    assert len(expected) == 122 - 2  # torchvision's 122 keys minus fc.weight, fc.bias
    assert list(state) == expected
    assert net.num_features == 512
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert state["layer2.0.conv1.weight"].shape == (128, 64, 3, 3)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert sum(p.numel() for p in net.parameters()) == 11_689_512 - 513_000  # torchvision minus fc
    assert create_backbone("resnet18", in_channels=1, image_size=224).conv1.weight.shape == (64, 1, 7, 7)
    assert create_backbone("resnet18", in_channels=3, image_size=32).conv1.weight.shape == (64, 3, 3, 3)


def fake_torchvision_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A torchvision-format resnet18 state dict (with fc) from a second instance of ours."""
    torch.manual_seed(seed)
    other = create_backbone("resnet18", in_channels=3, image_size=224)
    with torch.no_grad():  # make BN buffers non-trivial so that they are checked too
        for m in other.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    return state


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    state = fake_torchvision_state()
    pth, st = folder / "resnet18.pth", folder / "resnet18.safetensors"
    torch.save(state, pth)
    save_file(state, str(st))
    return state, pth, st


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_load_pretrained(weight_files: tuple, kind: str) -> None:
    state, pth, st = weight_files
    path = pth if kind == "pth" else st
    torch.manual_seed(0)
    net = create_backbone("resnet18", in_channels=3, image_size=224)
    assert not torch.equal(net.conv1.weight, state["conv1.weight"])
    report = load_pretrained(net, path)
    assert report.missing == report.unexpected == report.mismatched == report.skipped == []
    loaded = net.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert "fc.weight" not in loaded
    via_factory = create_backbone("resnet18", in_channels=3, image_size=224, pretrained=path)
    assert torch.equal(via_factory.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_load_pretrained_one_channel_sums_rgb(weight_files: tuple) -> None:
    state, pth, _ = weight_files
    net = create_backbone("resnet18", in_channels=1, image_size=224, pretrained=pth)
    assert torch.allclose(net.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_load_pretrained_small_input_skips_stem(weight_files: tuple, caplog: pytest.LogCaptureFixture) -> None:
    state, _, st = weight_files
    torch.manual_seed(0)
    net = create_backbone("resnet18", in_channels=3, image_size=32)
    stem = net.conv1.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="coophash.nets.resnet"):
        report = load_pretrained(net, st)
    assert report.skipped == ["conv1.weight"] and report.missing == []
    assert torch.equal(net.conv1.weight, stem)
    assert torch.equal(net.bn1.running_mean, state["bn1.running_mean"])
    assert any("conv1.weight" in r.getMessage() and str(st) in r.getMessage() for r in caplog.records)


def test_load_pretrained_into_smallconv(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = create_backbone("smallconv-nobn", in_channels=3, image_size=32)
    path = tmp_path / "desc.safetensors"
    save_file(source.state_dict(), str(path))
    torch.manual_seed(4)
    target = create_backbone("smallconv-nobn", in_channels=3, image_size=32, pretrained=path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
@pytest.mark.parametrize("fault", ["shape", "missing", "unexpected"])
def test_load_pretrained_errors_name_the_file(tmp_path: Path, weight_files: tuple, kind: str, fault: str) -> None:
    state = dict(weight_files[0])
    if fault == "shape":
        state["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
        key = "layer3.1.conv2.weight"
    elif fault == "missing":
        del state["layer2.0.downsample.1.running_var"]
        key = "layer2.0.downsample.1.running_var"
    else:
        state["layer5.0.conv1.weight"] = torch.zeros(1)
        key = "layer5.0.conv1.weight"
    path = tmp_path / f"broken.{kind}"
    if kind == "pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    torch.manual_seed(0)
    net = create_backbone("resnet18", in_channels=3, image_size=224)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(net, path)
    message = str(info.value)
    assert str(path) in message and key in message and fault.replace("shape", "shape mismatch") in message
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items()), "strict failure changed weights"
    report = load_pretrained(net, path, strict=False)
    assert key in report.missing + report.unexpected + report.mismatched


def test_load_pretrained_bad_files(tmp_path: Path) -> None:
    net = create_backbone("smallconv", image_size=8)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(net, tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_pretrained(net, junk)
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(ValueError, match="list.pt"):
        load_pretrained(net, notdict)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_given_seed(name: str) -> None:
    channels, size, kw = CASES[name][0]
    x = torch.rand(2, channels, size, size) * 2 - 1

    def build() -> HashingNet:
        torch.manual_seed(123)
        return create_hashing_net(name, nbits=8, n_classes=3, in_channels=channels, image_size=size, **kw)

    a, b = build(), build()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a(x).u, b(x).u)
    torch.manual_seed(124)
    c = create_hashing_net(name, nbits=8, n_classes=3, in_channels=channels, image_size=size, **kw)
    assert not torch.equal(a.hash_head.fc.weight, c.hash_head.fc.weight)


# ------------------------------------------------------------------------------------------ wideconv
def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_wideconv_is_smallconv_with_wider_stages() -> None:
    from coophash.nets.smallconv import WIDECONV_WIDTH, default_widths

    assert WIDECONV_WIDTH == 4
    torch.manual_seed(0)
    small = create_backbone("smallconv", in_channels=1, image_size=28)
    torch.manual_seed(0)
    same = create_backbone("wideconv", in_channels=1, image_size=28, width=1)
    assert [(k, v.shape) for k, v in small.state_dict().items()] == [(k, v.shape) for k, v in same.state_dict().items()]
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(small(x), same(x))  # width 1 is smallconv, weight for weight
    wide = create_backbone("wideconv", in_channels=1, image_size=28)  # default width 4
    convs = [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [4 * 32, 4 * 64, 4 * 64] and default_widths(28) == (32, 64)
    assert wide.num_features == 256 and wide(x).shape == (3, 256)
    assert [m.out_channels for m in create_backbone("wideconv", image_size=28, width=2,
                                                    widths=[8, 16]).modules()
            if isinstance(m, nn.Conv2d)] == [16, 32, 32]


def test_wideconv_parameters_grow_with_width() -> None:
    counts = [_n_params(create_backbone("wideconv", in_channels=1, image_size=28, width=w)) for w in (1, 2, 4, 8)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[0] == _n_params(create_backbone("smallconv", in_channels=1, image_size=28)) == 318_560
    assert counts[2] == 1_936_256 and counts[2] > 6 * counts[0]  # the default: about 6x smallconv
    # the 3x3 convs grow with the square of the width: stage 2's two convs at width 8 are 4x those at width 4
    c4, c8 = (sum(m.weight.numel() for m in create_backbone("wideconv", image_size=28, width=w).modules()
                  if isinstance(m, nn.Conv2d) and m.in_channels > 1) for w in (4, 8))
    assert c8 == 4 * c4


@pytest.mark.parametrize("width", [0, -1, "4", True])
def test_wideconv_rejects_bad_width(width: object) -> None:
    with pytest.raises(ValueError, match="wideconv width must be a positive number"):
        create_backbone("wideconv", image_size=28, width=width)


def test_resnet18_and_wideconv_train_a_step_at_28px() -> None:
    """Both over-fitting backbones take an optimiser step on 28 px one-channel images (MNIST's shape)."""
    for name in ("resnet18", "wideconv"):
        torch.manual_seed(0)
        net = create_hashing_net(name, nbits=32, n_classes=10, in_channels=1, image_size=28)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.rand(4, 1, 28, 28) * 2 - 1
        before = [p.detach().clone() for p in net.parameters()]
        loss = net(x).u.pow(2).mean() + net(x).logits.logsumexp(1).mean()
        loss.backward()
        opt.step()
        assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()) if b.grad is not None)
