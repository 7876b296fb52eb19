"""Compiled (numba) Hamming kernels: blocked exhaustive top-k, range scan and multi-index-hashing lookup.

All kernels take the database word-major, as a ``(W, capacity)`` ``uint64`` array of which the first ``n``
columns are used (word ``w`` of code ``i`` is ``db[w, i]``), and the queries row-major and flat (query ``j`` is
``q[j*W:(j+1)*W]``); distances are popcounts of XORed words (the LLVM ``ctpop`` intrinsic, a vector
popcount where the CPU has one).

Speed comes from three things:

* queries are processed in blocks of ``QUERY_BLOCK``; the database is streamed through the cache once
  per block, in chunks of ``CHUNK`` codes; the word-major layout makes the distance loop a plain
  vectorisable ``dist[i] += popcount(x[i] ^ q)`` over contiguous memory;
* top-k selection keeps, per query, an append-only buffer of candidates with distance below a running
  threshold; when the buffer fills it is compacted with a histogram over the distance range ``0..nbits``
  (counting selection, O(buffer)), which also fixes the new threshold.  Appends happen in database
  order and compaction keeps that order, so ties are broken by insertion order for free;
* a sub-block of ``SUB`` distances is only filtered (branch-free append) when its minimum (a vector
  reduction) beats the threshold, which after the first chunks is rare.

Every function is compiled with ``cache=True``; the first call of a signature pays the JIT (or cache
load) cost, so warm up before timing.
"""
from __future__ import annotations

import numpy as np

try:  # numba is a hard dependency of coophash, but keep the NumPy backend usable without it.
    import numba
    from numba import njit, prange, types
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None
    HAVE_NUMBA = False

#: Queries handled together while one chunk of the database is in cache.
QUERY_BLOCK = 16
#: Database codes per chunk (CHUNK * words * 8 bytes stays in L1/L2).
CHUNK = 1024
#: Codes per sub-block: a sub-block is filtered element by element only when its minimum beats the threshold.
SUB = 64
#: Distance reported where results run out (FAISS uses the same value).
SENTINEL = np.int32(np.iinfo(np.int32).max)

if HAVE_NUMBA:
    _JIT = dict(cache=True, nogil=True, fastmath=True)

    @intrinsic
    def _popcount(typingctx, x):  # noqa: D401 - numba intrinsic
        """Population count of a uint64 via the LLVM ctpop intrinsic."""
        if x != types.uint64:
            return None
        sig = types.int64(types.uint64)

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return sig, codegen

    @njit(**_JIT)
    def _dist_set(x, qw, dist):
        """dist[i] = popcount(x[i] ^ qw) over a contiguous word slice."""
        for i in range(x.shape[0]):
            dist[i] = _popcount(x[i] ^ qw)

    @njit(**_JIT)
    def _dist_add(x, qw, dist):
        """dist[i] += popcount(x[i] ^ qw) over a contiguous word slice."""
        for i in range(x.shape[0]):
            dist[i] += _popcount(x[i] ^ qw)

    @njit(**_JIT)
    def _dist_set_min(x, qw, dist, smin):
        """dist[i] = popcount(x[i] ^ qw) and smin[s] = min of sub-block s (SUB codes) of dist."""
        m = x.shape[0]
        nfull = m // SUB
        for s in range(nfull):
            b = s * SUB
            xs = x[b:b + SUB]
            ds = dist[b:b + SUB]
            mn = np.int32(1 << 30)
            for j in range(SUB):
                v = np.int32(_popcount(xs[j] ^ qw))
                ds[j] = v
                mn = min(mn, v)
            smin[s] = mn
        if nfull * SUB < m:
            b = nfull * SUB
            xs = x[b:m]
            ds = dist[b:m]
            mn = np.int32(1 << 30)
            for j in range(xs.shape[0]):
                v = np.int32(_popcount(xs[j] ^ qw))
                ds[j] = v
                mn = min(mn, v)
            smin[nfull] = mn

    @njit(**_JIT)
    def _dist_add_min(x, qw, dist, smin):
        """dist[i] += popcount(x[i] ^ qw) and smin[s] = min of sub-block s (SUB codes) of dist."""
        m = x.shape[0]
        nfull = m // SUB
        for s in range(nfull):
            b = s * SUB
            xs = x[b:b + SUB]
            ds = dist[b:b + SUB]
            mn = np.int32(1 << 30)
            for j in range(SUB):
                v = ds[j] + np.int32(_popcount(xs[j] ^ qw))
                ds[j] = v
                mn = min(mn, v)
            smin[s] = mn
        if nfull * SUB < m:
            b = nfull * SUB
            xs = x[b:m]
            ds = dist[b:m]
            mn = np.int32(1 << 30)
            for j in range(xs.shape[0]):
                v = ds[j] + np.int32(_popcount(xs[j] ^ qw))
                ds[j] = v
                mn = min(mn, v)
            smin[nfull] = mn

    @njit(**_JIT)
    def _chunk_distances(db, c0, m, q, qo, dist, smin):
        """Distances of query q[qo:qo+W] to codes c0..c0+m into dist[:m], sub-block minima into smin."""
        W = db.shape[0]
        if W == 1:
            _dist_set_min(db[0][c0:c0 + m], q[qo], dist, smin)
        else:
            _dist_set(db[0][c0:c0 + m], q[qo], dist)
            for w in range(1, W - 1):
                _dist_add(db[w][c0:c0 + m], q[qo + w], dist)
            _dist_add_min(db[W - 1][c0:c0 + m], q[qo + W - 1], dist, smin)

    @njit(**_JIT)
    def _compact(cd, cp, cnt, k, nbits, hist):
        """Keep the k best (distance, then position) of cd/cp[:cnt] in order; return (count, threshold).

        The returned threshold t is strict: a later candidate is useful only if its distance is < t.
        """
        for t in range(nbits + 2):
            hist[t] = 0
        for j in range(cnt):
            hist[cd[j]] += 1
        below = 0
        t = 0
        while t <= nbits:
            if below + hist[t] >= k:
                break
            below += hist[t]
            t += 1
        room = k - below
        w = 0
        for j in range(cnt):
            dj = cd[j]
            if dj < t or (dj == t and room > 0):
                if dj == t:
                    room -= 1
                cd[w] = dj
                cp[w] = cp[j]
                w += 1
        return w, t

    @njit(**_JIT)
    def _topk_block(db, n, q, q0, q1, ids, k, nbits, dout, iout):
        """Exact top-k for queries q0..q1 (at most QUERY_BLOCK) against the whole database."""
        nb = q1 - q0
        # Candidate buffer; compaction to k happens each time it fills (never when cap > n).
        cap = min(4 * k + SUB, n + SUB)
        cd = np.empty((nb, cap), np.int32)
        cp = np.empty((nb, cap), np.int64)
        cnt = np.zeros(nb, np.int64)
        thr = np.full(nb, nbits + 1, np.int64)
        hist = np.zeros(nbits + 2, np.int64)
        W = db.shape[0]
        dist = np.empty(CHUNK, np.int32)
        smin = np.empty(CHUNK // SUB + 1, np.int32)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            nsub = (m + SUB - 1) // SUB
            for b in range(nb):
                _chunk_distances(db, c0, m, q, (q0 + b) * W, dist, smin)
                t = thr[b]
                c = cnt[b]
                cdb = cd[b]
                cpb = cp[b]
                for si in range(nsub):
                    if smin[si] < t:
                        s0 = si * SUB
                        sub = dist[s0:min(m, s0 + SUB)]
                        if c + SUB > cap:
                            c, t = _compact(cdb, cpb, c, k, nbits, hist)
                        for i in range(sub.shape[0]):
                            d = sub[i]
                            cdb[c] = d
                            cpb[c] = c0 + s0 + i
                            c += 1 if d < t else 0
                cnt[b] = c
                thr[b] = t
        for b in range(nb):
            c = cnt[b]
            cdb = cd[b]
            cpb = cp[b]
            if c > k:
                c, _t = _compact(cdb, cpb, c, k, nbits, hist)
            # Stable counting sort by distance: positions stay in insertion order within a distance.
            for t in range(nbits + 2):
                hist[t] = 0
            for j in range(c):
                hist[cdb[j]] += 1
            acc = 0
            for t in range(nbits + 1):
                h = hist[t]
                hist[t] = acc
                acc += h
            qi = q0 + b
            for j in range(c):
                d = cdb[j]
                slot = hist[d]
                hist[d] += 1
                dout[qi, slot] = d
                iout[qi, slot] = ids[cpb[j]]
            for j in range(c, k):
                dout[qi, j] = SENTINEL
                iout[qi, j] = -1

    @njit(**_JIT)
    def topk_serial(db, n, q, ids, k, nbits, dout, iout):
        """Exact top-k (stable ties) of every query, one thread."""
        nq = q.shape[0] // db.shape[0]
        for q0 in range(0, nq, QUERY_BLOCK):
            _topk_block(db, n, q, q0, min(nq, q0 + QUERY_BLOCK), ids, k, nbits, dout, iout)

    @njit(cache=True, nogil=True, fastmath=True, parallel=True)
    def topk_parallel(db, n, q, ids, k, nbits, dout, iout):
        """Exact top-k (stable ties) of every query, query blocks spread over numba threads."""
        nq = q.shape[0] // db.shape[0]
        nblocks = (nq + QUERY_BLOCK - 1) // QUERY_BLOCK
        for bi in prange(nblocks):
            q0 = bi * QUERY_BLOCK
            _topk_block(db, n, q, q0, min(nq, q0 + QUERY_BLOCK), ids, k, nbits, dout, iout)

    @njit(**_JIT)
    def _grow(a, new_len):
        """Copy of 1-D array a with capacity new_len."""
        out = np.empty(new_len, a.dtype)
        out[: a.shape[0]] = a
        return out

    @njit(**_JIT)
    def range_scan(db, n, q, ids, r):
        """All codes within distance <= r of each query by exhaustive scan: (lims, D, I), sorted stably."""
        W = db.shape[0]
        nq = q.shape[0] // W
        lims = np.zeros(nq + 1, np.int64)
        out_d = np.empty(1024, np.int32)
        out_i = np.empty(1024, np.int64)
        total = 0
        dist = np.empty(CHUNK, np.int32)
        smin = np.empty(CHUNK // SUB + 1, np.int32)
        hist = np.zeros(r + 2, np.int64)
        thr = r + 1
        for q0 in range(0, nq, QUERY_BLOCK):
            q1 = min(nq, q0 + QUERY_BLOCK)
            nb = q1 - q0
            cap = 256
            cd = np.empty((nb, cap), np.int32)
            cp = np.empty((nb, cap), np.int64)
            cnt = np.zeros(nb, np.int64)
            for c0 in range(0, n, CHUNK):
                m = min(CHUNK, n - c0)
                nsub = (m + SUB - 1) // SUB
                for b in range(nb):
                    _chunk_distances(db, c0, m, q, (q0 + b) * W, dist, smin)
                    c = cnt[b]
                    for si in range(nsub):
                        if smin[si] < thr:
                            s0 = si * SUB
                            sub = dist[s0:min(m, s0 + SUB)]
                            if c + SUB > cap:
                                ncap = 2 * cap
                                ncd = np.empty((nb, ncap), np.int32)
                                ncp = np.empty((nb, ncap), np.int64)
                                ncd[:, :cap] = cd
                                ncp[:, :cap] = cp
                                cd = ncd
                                cp = ncp
                                cap = ncap
                            cdb = cd[b]
                            cpb = cp[b]
                            for i in range(sub.shape[0]):
                                d = sub[i]
                                cdb[c] = d
                                cpb[c] = c0 + s0 + i
                                c += 1 if d < thr else 0
                    cnt[b] = c
            for b in range(nb):
                c = cnt[b]
                if total + c > out_d.shape[0]:
                    new_len = max(2 * out_d.shape[0], total + c)
                    out_d = _grow(out_d, new_len)
                    out_i = _grow(out_i, new_len)
                for t in range(r + 2):
                    hist[t] = 0
                for j in range(c):
                    hist[cd[b, j]] += 1
                acc = total
                for t in range(r + 1):
                    h = hist[t]
                    hist[t] = acc
                    acc += h
                for j in range(c):
                    d = cd[b, j]
                    slot = hist[d]
                    hist[d] += 1
                    out_d[slot] = d
                    out_i[slot] = ids[cp[b, j]]
                total += c
                lims[q0 + b + 1] = total
        return lims, out_d[:total].copy(), out_i[:total].copy()

    @njit(inline="always")
    def _join_bits(lo_word, hi_word, off, length):
        """Bits off..off+length of the 128-bit value hi_word:lo_word (length <= 64, off < 64)."""
        v = lo_word >> np.uint64(off)
        if off + length > 64:
            v |= hi_word << np.uint64(64 - off)
        if length < 64:
            v &= (np.uint64(1) << np.uint64(length)) - np.uint64(1)
        return v

    @njit(inline="always")
    def _substr_q(q, base, start, length):
        """Bits start..start+length of the row-major query whose words begin at q[base]."""
        a = start >> 6
        hi = q[base + a + 1] if (start & 63) + length > 64 else np.uint64(0)
        return _join_bits(q[base + a], hi, start & 63, length)

    @njit(inline="always")
    def _substr_t(tcodes, t, e, start, length):
        """Bits start..start+length of entry e of table t (codes stored in the table's key order)."""
        a = start >> 6
        hi = tcodes[t, a + 1, e] if (start & 63) + length > 64 else np.uint64(0)
        return _join_bits(tcodes[t, a, e], hi, start & 63, length)

    @njit(**_JIT)
    def _lower_bound(keys, lo, hi, key):
        """First index in keys[lo:hi] (sorted) whose value is >= key."""
        while lo < hi:
            mid = (lo + hi) >> 1
            if keys[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @njit(**_JIT)
    def mih_range(tcodes, n, q, ids, r, s, starts, lens, shifts, keys, perm, offs, masks, nmasks):
        """Multi-index-hashing radius search: (lims, D, I) with all codes at distance <= r, sorted stably.

        Table ``t`` indexes bits ``starts[t] .. starts[t]+lens[t]`` of every code: ``keys[t]`` holds the
        substrings sorted, ``perm[t]`` the matching positions, ``offs[t]`` bucket offsets over the top bits
        (``key >> shifts[t]``) and ``tcodes[t]`` the codes themselves in that order (word-major), so the
        candidates of a bucket are verified from contiguous memory.  A code within ``r`` is within
        ``s = r // m`` of the query on at least one of the ``m`` substrings (pigeonhole), so probing every
        substring value within ``s`` (XOR with ``masks[t, :nmasks[t]]``) finds it.  A candidate met in table ``t`` is skipped when an earlier
        table also matches it within ``s`` (it was met there), so no "seen" array is needed.
        """
        W = tcodes.shape[1]
        nq = q.shape[0] // W
        m = starts.shape[0]
        lims = np.zeros(nq + 1, np.int64)
        out_d = np.empty(1024, np.int32)
        out_p = np.empty(1024, np.int64)
        total = 0
        qkeys = np.empty(m, np.uint64)
        for qi in range(nq):
            qb = qi * W
            for t in range(m):
                qkeys[t] = _substr_q(q, qb, starts[t], lens[t])
            begin = total
            for t in range(m):
                sh = np.uint64(shifts[t])
                for j in range(nmasks[t]):
                    key = qkeys[t] ^ masks[t, j]
                    h = np.int64(key >> sh)
                    lo = offs[t, h]
                    hi = offs[t, h + 1]
                    if shifts[t] > 0 and lo < hi:
                        lo = _lower_bound(keys[t], lo, hi, key)
                        hi = _lower_bound(keys[t], lo, hi, key + np.uint64(1)) if key != np.uint64(
                            0xFFFFFFFFFFFFFFFF) else hi
                    for e in range(lo, hi):
                        dup = False
                        for u in range(t):
                            if _popcount(_substr_t(tcodes, t, e, starts[u], lens[u]) ^ qkeys[u]) <= s:
                                dup = True
                                break
                        if dup:
                            continue
                        d = 0
                        for w in range(W):
                            d += _popcount(tcodes[t, w, e] ^ q[qb + w])
                        if d <= r:
                            p = perm[t, e]
                            if total == out_d.shape[0]:
                                out_d = _grow(out_d, 2 * total)
                                out_p = _grow(out_p, 2 * total)
                            out_d[total] = d
                            out_p[total] = p
                            total += 1
            c = total - begin
            if c > 1:
                # Sort this query's hits by (distance, position) = (distance, insertion order).
                sk = np.empty(c, np.int64)
                npos = max(n, 1)
                for j in range(c):
                    sk[j] = np.int64(out_d[begin + j]) * npos + out_p[begin + j]
                sk.sort()
                for j in range(c):
                    out_d[begin + j] = sk[j] // npos
                    out_p[begin + j] = sk[j] % npos
            lims[qi + 1] = total
        out_i = np.empty(total, np.int64)
        for j in range(total):
            out_i[j] = ids[out_p[j]]
        return lims, out_d[:total].copy(), out_i


def numba_threads() -> int:
    """Number of threads numba uses now (1 when numba is missing)."""
    return int(numba.get_num_threads()) if HAVE_NUMBA else 1


def max_numba_threads() -> int:
    """Largest thread count numba accepts."""
    return int(numba.config.NUMBA_NUM_THREADS) if HAVE_NUMBA else 1


def set_numba_threads(n: int) -> None:
    """Set numba's thread count for the calling thread."""
    if HAVE_NUMBA:
        numba.set_num_threads(int(n))
