"""Numba kernels for the 1-D total-variation prox (the taut-string algorithm).

For one row ``v`` of length ``n`` and a weight ``w >= 0`` the kernels compute

    z = argmin_z (1/2) ||z - v||^2 + w * sum_i |z_{i+1} - z_i|

with the taut-string characterization of this problem. Let ``R_0 = 0`` and
``R_k = v_0 + ... + v_{k-1}`` be the prefix sums of ``v``. Then the prefix sums ``S`` of
``z`` form the shortest path from ``(0, 0)`` to ``(n, R_n)`` inside the tube
``|S_k - R_k| <= w`` (``0 < k < n``), and ``z_k = S_{k+1} - S_k``; ``S_k - R_k`` is the
dual variable ``u_{k-1}`` of the optimality condition ``z = v - D^T u``, ``|u| <= w``.

The path is found by a funnel sweep in O(n). The sweep keeps an apex (the last point
where the path is known) and two chains of tube corners from it: the concave chain of
lower corners ``R_k - w`` and the convex chain of upper corners ``R_k + w``. When a new
corner makes one chain cross the other, the path through the crossed chain's first
corner is final, so the apex moves there and one constant segment of ``z`` is written.

Besides ``z`` the kernels write ``jumps[i]`` in ``{-1, 0, +1}``: the sign of
``z_{i+1} - z_i`` where the path bends (``+1`` at an upper corner, ``-1`` at a lower one)
and 0 inside a constant segment. At a bend ``u_i = w * jumps[i]``, so the signs are exact
even where a jump is numerically tiny, and the backward pass reads the segments from
them. Arithmetic is in float64 whatever the input dtype.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

__all__ = ["tv1d_rows"]

MIN_ENTRIES_PER_THREAD = 1 << 15
"""Entries per thread below which a thread's start costs more than its share of the work (about 0.5 ms)."""


@numba.njit(cache=True, nogil=True)
def _tv1d_row(v: np.ndarray, w: float, z: np.ndarray, jumps: np.ndarray) -> None:  # pragma: no cover - compiled
    n = v.shape[0]
    if n == 1 or w == 0.0:
        for i in range(n):
            z[i] = v[i]
        for i in range(n - 1):
            if v[i + 1] > v[i]:
                jumps[i] = 1
            elif v[i + 1] < v[i]:
                jumps[i] = -1
        return

    # The prox commutes with adding a constant, so the sweep runs on v - mean(v): this
    # keeps the tube heights near zero and the rounding of their differences small.
    total = 0.0
    for i in range(n):
        total += np.float64(v[i])
    mean = total / n

    # At w >= max_k |R_k - k mean| the constant z = mean(v) is optimal (its dual
    # variable u_k = R_k - k mean is feasible), and no corner is ever touched.
    running = 0.0
    w_max = 0.0
    for k in range(n - 1):
        running += np.float64(v[k]) - mean
        w_max = max(w_max, abs(running))
    if w >= w_max:
        for i in range(n):
            z[i] = mean
        return

    # Chains of corners (x, height), excluding the apex: lower_*[lower_head:lower_tail]
    # and upper_*[upper_head:upper_tail]. Each chain receives at most n points.
    lower_x = np.empty(n, np.int64)
    lower_y = np.empty(n, np.float64)
    upper_x = np.empty(n, np.int64)
    upper_y = np.empty(n, np.float64)
    lower_head = 0
    lower_tail = 0
    upper_head = 0
    upper_tail = 0
    apex_x = 0
    apex_y = 0.0

    running = 0.0
    for k in range(1, n + 1):
        running += np.float64(v[k - 1]) - mean
        low = running - w if k < n else running
        high = running + w if k < n else running

        # Lower corner (k, low): drop the chain's last corners while they lie on or
        # below the segment to the new corner, keeping the chain strictly concave.
        while lower_tail > lower_head:
            if lower_tail - lower_head >= 2:
                prev_x, prev_y = lower_x[lower_tail - 2], lower_y[lower_tail - 2]
            else:
                prev_x, prev_y = apex_x, apex_y
            last_x, last_y = lower_x[lower_tail - 1], lower_y[lower_tail - 1]
            if (last_y - prev_y) * (k - last_x) <= (low - last_y) * (last_x - prev_x):
                lower_tail -= 1
            else:
                break
        if lower_tail == lower_head:
            # The segment apex -> (k, low) passes above an upper corner: the path bends
            # up there (a positive jump of z), and that corner becomes the apex.
            while upper_head < upper_tail and (low - apex_y) * (upper_x[upper_head] - apex_x) > (
                upper_y[upper_head] - apex_y
            ) * (k - apex_x):
                corner_x = upper_x[upper_head]
                corner_y = upper_y[upper_head]
                value = (corner_y - apex_y) / (corner_x - apex_x) + mean
                for i in range(apex_x, corner_x):
                    z[i] = value
                jumps[corner_x - 1] = 1
                apex_x, apex_y = corner_x, corner_y
                upper_head += 1
            lower_head = 0
            lower_tail = 0
        lower_x[lower_tail] = k
        lower_y[lower_tail] = low
        lower_tail += 1
        if k == n:
            break

        # Upper corner (k, high), the mirror image: keep the chain strictly convex, and
        # move the apex along the lower chain while the new segment passes below it.
        while upper_tail > upper_head:
            if upper_tail - upper_head >= 2:
                prev_x, prev_y = upper_x[upper_tail - 2], upper_y[upper_tail - 2]
            else:
                prev_x, prev_y = apex_x, apex_y
            last_x, last_y = upper_x[upper_tail - 1], upper_y[upper_tail - 1]
            if (last_y - prev_y) * (k - last_x) >= (high - last_y) * (last_x - prev_x):
                upper_tail -= 1
            else:
                break
        if upper_tail == upper_head:
            while lower_head < lower_tail and (high - apex_y) * (lower_x[lower_head] - apex_x) < (
                lower_y[lower_head] - apex_y
            ) * (k - apex_x):
                corner_x = lower_x[lower_head]
                corner_y = lower_y[lower_head]
                value = (corner_y - apex_y) / (corner_x - apex_x) + mean
                for i in range(apex_x, corner_x):
                    z[i] = value
                jumps[corner_x - 1] = -1
                apex_x, apex_y = corner_x, corner_y
                lower_head += 1
            upper_head = 0
            upper_tail = 0
        upper_x[upper_tail] = k
        upper_y[upper_tail] = high
        upper_tail += 1

    # The lower chain now ends at (n, R_n - n mean) = (n, 0) and is the rest of the path;
    # its inner corners are lower corners, so each is a negative jump.
    for index in range(lower_head, lower_tail):
        corner_x = lower_x[index]
        corner_y = lower_y[index]
        value = (corner_y - apex_y) / (corner_x - apex_x) + mean
        for i in range(apex_x, corner_x):
            z[i] = value
        if corner_x < n:
            jumps[corner_x - 1] = -1
        apex_x, apex_y = corner_x, corner_y


@numba.njit(cache=True, nogil=True)
def _tv1d_rows(v: np.ndarray, w: np.ndarray, z: np.ndarray, jumps: np.ndarray) -> None:  # pragma: no cover
    for row in range(v.shape[0]):
        _tv1d_row(v[row], w[row], z[row], jumps[row])


# Rows are split over a Python thread pool (the kernel releases the GIL) instead of
# numba's prange. On Linux numba's threading layer is GNU OpenMP when present, and
# numba's guide "The Threading Layers" states that it is not fork-safe, so a DataLoader
# worker forked after a prange kernel ran could hang. A forked child rebuilds the pool,
# because its copy has no threads.
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="proxopt-tv1d")
            _pool_pid = os.getpid()
        return _pool


def tv1d_rows(v: np.ndarray, w: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Return the TV-1D prox of every row of ``v`` and the signs of its jumps.

    Args:
        v: C-contiguous array of shape ``(B, n)``, float32 or float64, finite.
        w: float64 array of shape ``(B,)``, finite and nonnegative: the weight per row.
        threads: the most threads to use; a batch gets one thread per
            :data:`MIN_ENTRIES_PER_THREAD` entries, up to this number.

    Returns:
        ``z`` of the shape and dtype of ``v``, and ``jumps`` (int8, shape ``(B, n - 1)``)
        with the sign of ``z[:, i + 1] - z[:, i]`` at segment ends and 0 inside segments.
        At ``w == 0`` the output is ``v`` and ``jumps`` is the sign of ``v``'s differences.
    """
    batch, n = v.shape
    z = np.empty_like(v)
    jumps = np.zeros((batch, max(n - 1, 0)), dtype=np.int8)
    tasks = max(1, min(threads, batch, v.size // MIN_ENTRIES_PER_THREAD))
    if tasks == 1:
        _tv1d_rows(v, w, z, jumps)
        return z, jumps

    bounds = np.linspace(0, batch, tasks + 1).astype(np.int64)
    pool = _thread_pool()
    futures = [
        pool.submit(_tv1d_rows, v[start:stop], w[start:stop], z[start:stop], jumps[start:stop])
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    for future in futures:
        future.result()
    return z, jumps
