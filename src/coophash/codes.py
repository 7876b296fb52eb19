"""Binary codes: binarisation, LSB-first packing (the FAISS order) and Hamming distances.

Conventions used everywhere in coophash:

* A continuous hash output ``u`` becomes the bit ``b = 1[u >= 0]`` (never ``sign``, which maps 0 to 0).
* Bits are a ``(n, K)`` array of 0/1 (``uint8`` for NumPy, ``torch.uint8`` for torch).
* Packed codes are ``(n, ceil(K / 8))`` ``uint8``; bit ``j`` of a code lives in byte ``j // 8`` at bit
  position ``j % 8`` (least-significant bit first, ``np.packbits(bitorder="little")``), exactly the layout
  of ``faiss.IndexBinary*``.  When ``K`` is not a multiple of 8 the unused high bits of the last byte are
  zero ("padding"); they never change a Hamming distance because both sides carry zeros there.

Every function accepts NumPy arrays or torch tensors and returns the same kind it was given.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "binarize",
    "to_signed",
    "pack_bits",
    "unpack_bits",
    "n_bytes",
    "hamming_distance",
    "hamming_distance_bits",
    "popcount_table",
    "check_packed",
]

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount_table() -> np.ndarray:
    """Number of set bits of every byte value, shape (256,), uint8."""
    return _POPCOUNT8.copy()


def n_bytes(nbits: int) -> int:
    """Bytes needed for an ``nbits`` code (``ceil(nbits / 8)``)."""
    if int(nbits) <= 0:
        raise ValueError(f"nbits must be a positive integer, got {nbits!r}")
    return (int(nbits) + 7) // 8


def binarize(u: ArrayLike) -> ArrayLike:
    """Bits ``1[u >= 0]`` as uint8 (0 maps to 1, unlike ``sign``)."""
    if isinstance(u, torch.Tensor):
        return (u >= 0).to(torch.uint8)
    return (np.asarray(u) >= 0).astype(np.uint8)


def to_signed(bits: ArrayLike) -> ArrayLike:
    """Map bits {0, 1} to {-1, +1} floats (``2b - 1``)."""
    if isinstance(bits, torch.Tensor):
        return bits.to(torch.float32) * 2 - 1
    return np.asarray(bits, dtype=np.float32) * 2 - 1


def _check_bits(bits: np.ndarray) -> None:
    if bits.ndim != 2:
        raise ValueError(f"bits must be a 2-D (n, K) array, got shape {tuple(bits.shape)}")
    if bits.size and (bits.max() > 1 or bits.min() < 0):
        raise ValueError("bits must contain only 0 and 1; binarize continuous outputs first")


def pack_bits(bits: ArrayLike) -> ArrayLike:
    """Pack ``(n, K)`` 0/1 bits into ``(n, ceil(K/8))`` uint8, least-significant bit first."""
    if isinstance(bits, torch.Tensor):
        return torch.from_numpy(pack_bits(bits.detach().cpu().numpy())).to(bits.device)
    arr = np.asarray(bits)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    _check_bits(arr)
    return np.packbits(arr.astype(np.uint8, copy=False), axis=1, bitorder="little")


def unpack_bits(packed: ArrayLike, nbits: int) -> ArrayLike:
    """Inverse of :func:`pack_bits`: ``(n, ceil(K/8))`` uint8 to ``(n, K)`` 0/1 uint8."""
    if isinstance(packed, torch.Tensor):
        return torch.from_numpy(unpack_bits(packed.detach().cpu().numpy(), nbits)).to(packed.device)
    arr = check_packed(packed, nbits)
    return np.unpackbits(arr, axis=1, count=int(nbits), bitorder="little")


def check_packed(packed: ArrayLike, nbits: int, name: str = "codes") -> np.ndarray:
    """Validate a packed code array for ``nbits`` and return it as a C-contiguous uint8 NumPy array."""
    if isinstance(packed, torch.Tensor):
        packed = packed.detach().cpu().numpy()
    arr = np.asarray(packed)
    nb = n_bytes(nbits)
    if arr.ndim == 1 and arr.size == nb:
        arr = arr.reshape(1, nb)
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be packed uint8 codes, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != nb:
        raise ValueError(
            f"{name} must have shape (n, {nb}) for {nbits}-bit codes, got {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr)


def hamming_distance(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """All-pairs Hamming distances between packed codes ``a (n, B)`` and ``b (m, B)``.

    Returns an ``(n, m)`` int32 matrix (a torch tensor when ``a`` is one).  Memory is ``n * m``; chunk the
    queries for large problems (:mod:`coophash.metrics` does).
    """
    if isinstance(a, torch.Tensor):
        bt = b if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b))
        if a.dtype != torch.uint8 or bt.dtype != torch.uint8:
            raise TypeError("packed codes must be uint8")
        if a.ndim != 2 or bt.ndim != 2 or a.shape[1] != bt.shape[1]:
            raise ValueError(f"code widths differ: {tuple(a.shape)} vs {tuple(bt.shape)}")
        table = torch.from_numpy(_POPCOUNT8).to(a.device, torch.int32)
        x = torch.bitwise_xor(a[:, None, :], bt.to(a.device)[None, :, :])
        return table[x.long()].sum(dim=2, dtype=torch.int32)
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise TypeError("packed codes must be uint8")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"code widths differ: {a.shape} vs {b.shape}")
    nb = a.shape[1]
    if nb % 8 == 0:
        # Reinterpret as uint64 words: 8x fewer popcounts.
        a64 = np.ascontiguousarray(a).view(np.uint64)
        b64 = np.ascontiguousarray(b).view(np.uint64)
        out = np.zeros((a.shape[0], b.shape[0]), dtype=np.int32)
        for w in range(a64.shape[1]):
            out += np.bitwise_count(a64[:, w, None] ^ b64[None, :, w]).astype(np.int32)
        return out
    x = a[:, None, :] ^ b[None, :, :]
    return np.bitwise_count(x).sum(axis=2, dtype=np.int32)


def hamming_distance_bits(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Hamming distances between unpacked 0/1 bit matrices ``(n, K)`` and ``(m, K)`` (int32)."""
    if isinstance(a, torch.Tensor):
        bt = b if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b))
        af = a.to(torch.float32)
        bf = bt.to(a.device, torch.float32)
        k = a.shape[1]
        # d = K/2 - <2a-1, 2b-1>/2
        ip = (2 * af - 1) @ (2 * bf - 1).T
        return torch.round((k - ip) / 2).to(torch.int32)
    a = np.asarray(a).astype(np.int32)
    b = np.asarray(b).astype(np.int32)
    k = a.shape[1]
    ip = (2 * a - 1) @ (2 * b - 1).T
    return ((k - ip) // 2).astype(np.int32)
