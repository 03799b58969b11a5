"""Scoring a slide's tiles in bounded batches: a thread pool of OpenSlide handles reads ahead
while the model scores.

OpenSlide is thread-safe for reads and releases the GIL in its C library, as PIL does while
resizing, so `workers` threads — each with its own handle, opened once — read and downsample
small chunks of tiles while the calling thread scores the previous batch. About two batches of
`patch_px`² patches are held at any time (plus one region per reading thread), so memory does
not grow with the slide.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from histomlf.slides.reader import ReadPlan, open_slide, read_patch

ScoreFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


# Tiles per read job: small enough that every thread has work even in a slide's one batch.
READ_CHUNK = 16


def read_batches(
    path: str | Path,
    plan: ReadPlan,
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    batch_size: int = 256,
    workers: int = 2,
) -> Iterator[np.ndarray]:
    """`[n, patch_px, patch_px, 3]` uint8 batches of the tiles at (`xs`, `ys`), in order.

    Reads run as jobs of `READ_CHUNK` tiles on `workers` threads, at most two batches' worth in
    flight, so the next batch is being read while the caller scores this one.
    """
    local = threading.local()
    handles = []
    lock = threading.Lock()

    def read(start: int) -> np.ndarray:
        slide = getattr(local, "slide", None)
        if slide is None:
            slide = local.slide = open_slide(path)
            with lock:
                handles.append(slide)
        stop = min(start + READ_CHUNK, len(xs))
        chunk = np.empty((stop - start, plan.patch_px, plan.patch_px, 3), np.uint8)
        for row, index in enumerate(range(start, stop)):
            chunk[row] = read_patch(slide, plan, xs[index], ys[index])
        return chunk

    in_flight = max(workers, 2 * -(-batch_size // READ_CHUNK))
    starts = iter(range(0, len(xs), READ_CHUNK))
    pending: deque[Future] = deque()
    parts: list[np.ndarray] = []
    held = 0
    try:
        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="slide-read")
        with pool:
            try:
                for start in starts:
                    pending.append(pool.submit(read, start))
                    if len(pending) >= in_flight:
                        break
                while pending:
                    chunk = pending.popleft().result()
                    next_start = next(starts, None)
                    if next_start is not None:
                        pending.append(pool.submit(read, next_start))
                    parts.append(chunk)
                    held += len(chunk)
                    if held >= batch_size or not pending:
                        batch = np.concatenate(parts)
                        parts, held = [], 0
                        for offset in range(0, len(batch), batch_size):
                            yield batch[offset : offset + batch_size]
            finally:
                for future in pending:
                    future.cancel()
    finally:
        for slide in handles:
            slide.close()


def score_tiles(
    path: str | Path,
    plan: ReadPlan,
    xs: np.ndarray,
    ys: np.ndarray,
    score: ScoreFn,
    *,
    batch_size: int = 256,
    workers: int = 2,
    progress: Progress | None = None,
) -> np.ndarray:
    """P(IDC) (float64) of every tile at (`xs`, `ys`), scored by `score` batch by batch."""
    out = np.empty(len(xs), np.float64)
    done = 0
    if progress:
        progress(0, len(xs))
    for batch in read_batches(path, plan, xs, ys, batch_size=batch_size, workers=workers):
        out[done : done + len(batch)] = np.asarray(score(batch), np.float64).reshape(-1)
        done += len(batch)
        if progress:
            progress(done, len(xs))
    return out
