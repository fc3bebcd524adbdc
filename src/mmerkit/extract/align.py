"""Word-level alignment: every modality resampled to one step per word (an aligned store).

As the CMU-MOSEI aligned features were made (Zadeh et al. 2018, CMU-MultimodalSDK), each
word's audio and visual vector is the mean of the frames inside the word's time span. Here a
frame is inside word [s, e) when its midpoint is (half-open, so a frame on a boundary between
two words counts once). Invalid frames (mask False: no face) are left out of the mean.

A word with no valid frame inside (words shorter than a frame step: at 5 fps a visual frame
lasts 200 ms, longer than many function words) takes the valid frame whose midpoint is nearest
to the word's midpoint: a zero row would read as "neutral face, silence" and is not what was
seen or heard. A modality with no valid step at all (no face anywhere) stays missing: (0, D).

Text: tokens that carry `word_index` (the text extractor sets it for timed words) are averaged
per word by that index, so a word split into several word pieces becomes the mean of its
pieces; untimed text (a transcript without word timing) cannot be aligned and is an error.

Example:
    >>> words = [Word("hi", 0.0, 0.3), Word("there", 0.3, 0.8)]
    >>> audio = Features(np.arange(8, dtype=np.float32)[:, None], frame_times(8, 10.0))
    >>> align_to_words({"audio": audio}, words)["audio"][:, 0].tolist()
    [1.0, 5.0]
"""

from __future__ import annotations

import numpy as np

from mmerkit.errors import DataError
from mmerkit.extract.base import Features, Word


def align_to_words(features: dict[str, Features], words: list[Word]) -> dict[str, np.ndarray]:
    """Average each modality's steps within each word's span: {modality: (len(words), D)}.

    A modality whose Features have no valid step (T = 0, or every mask False) comes back as
    (0, D), a missing modality. Raises DataError for features that carry neither word indices
    nor times, since they cannot be placed on the words.
    """
    if not words:
        return {m: np.zeros((0, f.values.shape[1]), np.float32) for m, f in features.items()}
    spans = np.array([[w.start, w.end] for w in words], np.float64)
    if np.any(spans[:, 1] < spans[:, 0]):
        bad = int(np.argmax(spans[:, 1] < spans[:, 0]))
        raise DataError(f"word {bad} ({words[bad].text!r}) ends at {words[bad].end} s before it "
                        f"starts at {words[bad].start} s; fix the word timing")
    out = {}
    for modality, feats in features.items():
        valid = np.ones(len(feats), bool) if feats.mask is None else feats.mask
        if len(feats) == 0 or not valid.any():
            out[modality] = np.zeros((0, feats.values.shape[1]), np.float32)
        elif feats.word_index is not None:
            out[modality] = _mean_by_index(feats.values[valid], feats.word_index[valid], len(words))
        elif feats.times is not None:
            out[modality] = _mean_in_spans(feats.values[valid], feats.times[valid], spans)
        else:
            raise DataError(f"{modality} features have no times (a transcript without word "
                            "timing) and cannot be aligned to words; give word timings or use "
                            "--align none")
    return out


def _mean_by_index(values: np.ndarray, index: np.ndarray, n_words: int) -> np.ndarray:
    """Mean of the rows sharing each word index; a word without rows takes a neighbour's."""
    sums = np.zeros((n_words, values.shape[1]), np.float64)
    np.add.at(sums, index, values)
    counts = np.bincount(index, minlength=n_words)[:n_words]
    has = counts > 0
    sums[has] /= counts[has, None]
    if not has.all():  # a word the tokenizer dropped entirely (e.g. only control characters)
        donors = np.flatnonzero(has)
        missing = np.flatnonzero(~has)
        nearest = donors[np.abs(donors[None, :] - missing[:, None]).argmin(axis=1)]
        sums[missing] = sums[nearest]
    return sums.astype(np.float32)


def _mean_in_spans(values: np.ndarray, times: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Mean of the rows whose midpoint lies in each [start, end) span; else the nearest row."""
    mids = times.astype(np.float64).mean(axis=1)
    order = np.argsort(mids, kind="stable")
    mids, values = mids[order], values[order].astype(np.float64)
    first = np.searchsorted(mids, spans[:, 0], side="left")
    stop = np.searchsorted(mids, spans[:, 1], side="left")
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    counts = stop - first
    out = (cumulative[stop] - cumulative[first]) / np.maximum(counts, 1)[:, None]
    empty = counts == 0
    if empty.any():
        centres = spans[empty].mean(axis=1)
        out[empty] = values[np.abs(mids[None, :] - centres[:, None]).argmin(axis=1)]
    return out.astype(np.float32)
