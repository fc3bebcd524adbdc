"""Ragged sequences -> one zero-padded array: the one padding helper of converters, extraction,
prediction from media and the server.

Example:
    >>> x, lens = pad_ragged([np.ones((2, 3)), np.ones((0, 3))], 3)
    >>> x.shape, lens.tolist()
    ((2, 2, 3), [2, 0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_ragged(seqs: Sequence[np.ndarray], dim: int, max_len: int | None = None,
               min_steps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, dim) float32, zero after each sequence's end, and the (N,) int64 lengths of the
    (T_i, dim) sequences `seqs`; each cut to `max_len` steps when given. T is the longest length,
    at least `min_steps` (1: a batch of empty sequences still has a time axis)."""
    lens = np.array([len(s) if max_len is None else min(len(s), max_len) for s in seqs], np.int64)
    x = np.zeros((len(seqs), max(int(lens.max(initial=0)), min_steps), dim), np.float32)
    if lens.sum():
        # one masked assignment instead of a copy per sample
        x[np.arange(x.shape[1])[None, :] < lens[:, None]] = np.concatenate(
            [np.asarray(s[:n], np.float32) for s, n in zip(seqs, lens) if n])
    return x, lens
