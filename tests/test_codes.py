"""Codes: binarisation, LSB-first packing and Hamming distances against slow references."""
import numpy as np
import pytest
import torch

from coophash.codes import (
    binarize,
    check_packed,
    hamming_distance,
    hamming_distance_bits,
    n_bytes,
    pack_bits,
    to_signed,
    unpack_bits,
)


def slow_pack(bits: np.ndarray) -> np.ndarray:
    n, k = bits.shape
    out = np.zeros((n, (k + 7) // 8), dtype=np.uint8)
    for i in range(n):
        for j in range(k):
            if bits[i, j]:
                out[i, j // 8] |= 1 << (j % 8)
    return out


def slow_hamming(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    return np.array([[sum(int(x != y) for x, y in zip(ra, rb)) for rb in b_bits] for ra in a_bits])


def test_binarize_maps_zero_to_one():
    u = np.array([[-0.5, 0.0, 0.3, -0.0]])
    assert binarize(u).tolist() == [[0, 1, 1, 1]]
    assert binarize(torch.tensor(u)).tolist() == [[0, 1, 1, 1]]
    assert to_signed(binarize(u)).tolist() == [[-1, 1, 1, 1]]


@pytest.mark.parametrize("k", [1, 7, 8, 13, 16, 32, 48, 64, 100, 128])
def test_pack_matches_reference_and_roundtrips(k):
    rng = np.random.default_rng(k)
    bits = rng.integers(0, 2, (9, k)).astype(np.uint8)
    packed = pack_bits(bits)
    assert packed.shape == (9, n_bytes(k))
    np.testing.assert_array_equal(packed, slow_pack(bits))
    np.testing.assert_array_equal(unpack_bits(packed, k), bits)
    tp = pack_bits(torch.from_numpy(bits))
    assert isinstance(tp, torch.Tensor)
    np.testing.assert_array_equal(tp.numpy(), packed)
    # padding bits stay zero
    if k % 8:
        assert (packed[:, -1] >> (k % 8)).max() == 0


def test_lsb_first_layout():
    bits = np.zeros((1, 16), np.uint8)
    bits[0, 0] = 1  # bit 0 -> byte 0, value 1
    bits[0, 9] = 1  # bit 9 -> byte 1, value 2
    assert pack_bits(bits).tolist() == [[1, 2]]


@pytest.mark.parametrize("k", [5, 12, 64, 72, 128])
def test_hamming_matches_reference(k):
    rng = np.random.default_rng(100 + k)
    a = rng.integers(0, 2, (6, k)).astype(np.uint8)
    b = rng.integers(0, 2, (11, k)).astype(np.uint8)
    b[:3] = a[:3]  # exact duplicates give 0
    ref = slow_hamming(a, b)
    np.testing.assert_array_equal(hamming_distance(pack_bits(a), pack_bits(b)), ref)
    np.testing.assert_array_equal(hamming_distance_bits(a, b), ref)
    t = hamming_distance(torch.from_numpy(pack_bits(a)), torch.from_numpy(pack_bits(b)))
    np.testing.assert_array_equal(t.numpy(), ref)
    tb = hamming_distance_bits(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_array_equal(tb.numpy(), ref)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="only 0 and 1"):
        pack_bits(np.array([[0, 2]]))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        check_packed(np.zeros((3, 3), np.uint8), 32)
    with pytest.raises(TypeError, match="uint8"):
        check_packed(np.zeros((3, 4), np.int32), 32)
    with pytest.raises(ValueError, match="positive"):
        n_bytes(0)
    with pytest.raises(ValueError, match="widths differ"):
        hamming_distance(np.zeros((2, 4), np.uint8), np.zeros((2, 8), np.uint8))
