"""Multi-index hashing (MIH) for exact Hamming radius search.

A code of ``nbits`` bits is cut into ``m`` disjoint contiguous substrings.  If two codes are within
Hamming distance ``r``, then on at least one substring they are within ``s = r // m`` (pigeonhole: were
every substring ``>= s + 1`` apart, the total would be ``>= m (s + 1) > r``).  With ``m >= r + 1`` that
means an exact substring match, so a query looks up its own substring in each of the ``m`` hash tables,
gathers the candidates, drops duplicates and verifies the full distance: exact and sublinear.

Each table is a sorted array of substring values (``keys``), the positions in that order (``perm``) and
bucket offsets over the top ``P`` bits of the value (``offs``), so a lookup is one offset read plus a
binary search inside a small bucket.  :func:`plan` picks ``m`` with a simple cost model and says when
MIH would be slower than a linear scan (large ``r``), in which case the index falls back to the scan.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

__all__ = ["MIHPlan", "MIHTables", "plan", "build_tables", "flip_masks", "extract_substrings", "query_numpy"]

# Cost model, in nanoseconds (measured order of magnitude on one core; only ratios matter).
_COST_PROBE = 25.0  # one table lookup (offset read + short binary search, cache misses)
_COST_CANDIDATE = 12.0  # one candidate: duplicate check and exact distance (codes stored in table order)
_SAFETY = 2.0  # MIH must be estimated this many times cheaper than the scan to be used
_MAX_PROBES_PER_TABLE = 1 << 16


@dataclass(frozen=True)
class MIHPlan:
    """How to answer one radius: ``m`` substrings, per-substring radius ``s`` and the estimated costs."""

    m: int
    s: int
    starts: tuple[int, ...]
    lens: tuple[int, ...]
    cost_ns: float
    scan_cost_ns: float

    @property
    def beats_scan(self) -> bool:
        """Whether the cost model prefers MIH to the linear scan."""
        return self.cost_ns * _SAFETY < self.scan_cost_ns


@dataclass
class MIHTables:
    """Hash tables of one substring split (see module docstring)."""

    m: int
    starts: np.ndarray  # (m,) int64
    lens: np.ndarray  # (m,) int64
    shifts: np.ndarray  # (m,) int64: bucket = key >> shift
    keys: np.ndarray  # (m, n) uint64, sorted per row
    perm: np.ndarray  # (m, n) int64, positions in key order (ascending position within equal keys)
    offs: np.ndarray  # (m, 2**P + 1) int64 bucket offsets
    tcodes: np.ndarray | None = None  # (m, W, n) uint64: the codes in each table's key order (compiled path)

    @property
    def nbytes(self) -> int:
        """Memory held by the tables."""
        extra = 0 if self.tcodes is None else self.tcodes.nbytes
        return int(self.keys.nbytes + self.perm.nbytes + self.offs.nbytes + extra)


def split(nbits: int, m: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Starts and lengths of ``m`` contiguous substrings covering ``nbits`` bits as evenly as possible."""
    base, extra = divmod(nbits, m)
    lens = tuple(base + (1 if t < extra else 0) for t in range(m))
    starts = tuple(int(x) for x in np.concatenate([[0], np.cumsum(lens)[:-1]]))
    return starts, lens


def _ball(length: int, s: int) -> int:
    """Number of ``length``-bit values within Hamming distance ``s`` of a given one."""
    return sum(math.comb(length, j) for j in range(min(s, length) + 1))


@lru_cache(maxsize=256)
def plan(
    nbits: int,
    n: int,
    r: int,
    scan_ns_per_word: float,
    prefer: tuple[int, ...] = (),
    forced: bool = False,
) -> MIHPlan | None:
    """Cheapest substring split for radius ``r`` over ``n`` codes, or None when none is allowed.

    ``prefer`` lists splits whose tables already exist: one of them is taken when its estimated cost is
    within 4x of the best (building new tables costs a sort of the whole database).  Without ``forced``
    splits needing more than 65,536 probes per table are skipped.
    """
    words = (nbits + 63) // 64
    scan_cost = max(n, 1) * words * scan_ns_per_word
    m_min = max(1, -(-nbits // 64))
    m_max = max(m_min, min(nbits, 64))
    options: list[MIHPlan] = []
    for m in range(m_min, m_max + 1):
        s = r // m
        starts, lens = split(nbits, m)
        balls = [_ball(L, s) for L in lens]
        if not forced and max(balls) > _MAX_PROBES_PER_TABLE:
            continue
        probes = sum(balls)
        cands = sum(b * n / 2.0 ** L for b, L in zip(balls, lens))
        cost = probes * _COST_PROBE + cands * _COST_CANDIDATE
        options.append(MIHPlan(m, s, starts, lens, cost, scan_cost))
    if not options:
        return None
    best = min(options, key=lambda p: p.cost_ns)
    reuse = [p for p in options if p.m in prefer and p.cost_ns <= 4 * best.cost_ns]
    return min(reuse, key=lambda p: p.cost_ns) if reuse else best


def extract_substrings(words: np.ndarray, start: int, length: int) -> np.ndarray:
    """Bits ``start .. start+length`` (``length <= 64``) of every code of word-major ``(W, n)`` uint64 words."""
    a, off = divmod(int(start), 64)
    v = words[a] >> np.uint64(off)
    if off + length > 64:
        v = v | (words[a + 1] << np.uint64(64 - off))
    if length < 64:
        v = v & np.uint64((1 << length) - 1)
    return v


def flip_masks(length: int, s: int) -> np.ndarray:
    """All ``length``-bit masks of weight ``<= s`` (weight 0 first), as uint64."""
    out = [0]
    for j in range(1, min(s, length) + 1):
        for bits in combinations(range(length), j):
            v = 0
            for b in bits:
                v |= 1 << b
            out.append(v)
    return np.array(out, dtype=np.uint64)


def build_tables(
    words: np.ndarray, starts: tuple[int, ...], lens: tuple[int, ...], with_codes: bool = False
) -> MIHTables:
    """Build the MIH tables of a word-major ``(W, n)`` uint64 database for the given substring split.

    ``with_codes`` also stores a copy of the codes in each table's key order (``tcodes``; ``m`` times the
    database) so that the compiled lookup verifies the candidates of a bucket from contiguous memory.
    """
    n = words.shape[1]
    m = len(starts)
    p_bits = max(1, min(min(lens), max(1, math.ceil(math.log2(max(n, 2)))), 24))
    keys = np.empty((m, n), dtype=np.uint64)
    perm = np.empty((m, n), dtype=np.int64)
    offs = np.empty((m, (1 << p_bits) + 1), dtype=np.int64)
    shifts = np.empty(m, dtype=np.int64)
    tcodes = np.empty((m, words.shape[0], n), dtype=np.uint64) if with_codes else None
    for t, (st, L) in enumerate(zip(starts, lens)):
        k = extract_substrings(words, st, L)
        order = np.argsort(k, kind="stable")
        perm[t] = order
        keys[t] = k[order]
        if tcodes is not None:
            np.take(words, order, axis=1, out=tcodes[t])
        shift = L - p_bits
        shifts[t] = shift
        buckets = (keys[t] >> np.uint64(shift)).astype(np.int64)
        counts = np.bincount(buckets, minlength=1 << p_bits)
        offs[t, 0] = 0
        np.cumsum(counts, out=offs[t, 1:])
    return MIHTables(
        m=m,
        starts=np.asarray(starts, dtype=np.int64),
        lens=np.asarray(lens, dtype=np.int64),
        shifts=shifts,
        keys=keys,
        perm=perm,
        offs=offs,
        tcodes=tcodes,
    )


def masks_for(tables: MIHTables, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``(m, max_count)`` flip masks per table and their counts, for per-substring radius ``s``."""
    per = [flip_masks(int(L), s) for L in tables.lens]
    counts = np.array([len(x) for x in per], dtype=np.int64)
    out = np.zeros((tables.m, int(counts.max())), dtype=np.uint64)
    for t, x in enumerate(per):
        out[t, : len(x)] = x
    return out, counts


def _popcount_cols(x: np.ndarray) -> np.ndarray:
    """Sum of bit counts over the words (axis 0) of a word-major uint64 array, as int64."""
    return np.bitwise_count(x).sum(axis=0, dtype=np.int64)


def query_numpy(
    words: np.ndarray,
    q: np.ndarray,
    ids: np.ndarray,
    r: int,
    s: int,
    tables: MIHTables,
    masks: np.ndarray,
    nmasks: np.ndarray,
    batch: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised NumPy MIH radius search; same contract as the numba kernel ``mih_range``.

    ``words`` is the word-major ``(W, n)`` database, ``q`` the row-major ``(nq, W)`` queries.
    """
    nq = q.shape[0]
    lims = np.zeros(nq + 1, dtype=np.int64)
    all_q, all_d, all_p = [], [], []
    batch = max(1, min(batch, (1 << 20) // max(1, int(nmasks.max()))))  # bound the probe array's memory
    for b0 in range(0, nq, batch):
        qb = q[b0 : b0 + batch].T  # (W, nb)
        nb = qb.shape[1]
        qkeys = [extract_substrings(qb, int(st), int(L)) for st, L in zip(tables.starts, tables.lens)]
        for t in range(tables.m):
            probes = (qkeys[t][:, None] ^ masks[t, : nmasks[t]][None, :]).ravel()
            lo = np.searchsorted(tables.keys[t], probes, side="left")
            hi = np.searchsorted(tables.keys[t], probes, side="right")
            cnt = hi - lo
            total = int(cnt.sum())
            if total == 0:
                continue
            qidx = np.repeat(np.repeat(np.arange(nb), int(nmasks[t])), cnt)
            first = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
            pos = tables.perm[t][first + np.arange(total)]
            keep = np.ones(total, dtype=bool)
            cand = words[:, pos]
            for u in range(t):
                sub = extract_substrings(cand, int(tables.starts[u]), int(tables.lens[u]))
                keep &= np.bitwise_count(sub ^ qkeys[u][qidx]) > s
            pos, qidx = pos[keep], qidx[keep]
            d = _popcount_cols(cand[:, keep] ^ qb[:, qidx])
            hit = d <= r
            all_q.append(qidx[hit] + b0)
            all_d.append(d[hit])
            all_p.append(pos[hit])
    if all_q:
        qq = np.concatenate(all_q)
        dd = np.concatenate(all_d)
        pp = np.concatenate(all_p)
        order = np.lexsort((pp, dd, qq))
        qq, dd, pp = qq[order], dd[order], pp[order]
        np.cumsum(np.bincount(qq, minlength=nq), out=lims[1:])
    else:
        dd = np.zeros(0, dtype=np.int64)
        pp = np.zeros(0, dtype=np.int64)
    return lims, dd.astype(np.int32), ids[pp].astype(np.int64, copy=False)
