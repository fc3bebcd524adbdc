"""What the predict and timeline endpoints share: a clip's (or a window's) features as the model
takes them, and one submission to the model's queue. Its own module so that app.py and
timeline.py both import it and neither imports the other back."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmerkit.serve.batching import QueueFull
from mmerkit.serve.errors import RequestError
from mmerkit.serve.inputs import Sample, as_steps


async def _submit(state: Any, samples: list[Sample]) -> list[dict[str, Any]]:
    try:
        return await state.batcher.submit(samples)
    except QueueFull:
        raise RequestError(503, "queue", "the model's queue is full", "retry in a moment",
                           headers={"Retry-After": "1"}) from None


def media_steps(feats: dict[str, np.ndarray], state: Any) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """A clip's (or a timeline window's) features as the model takes them, and which were cut."""
    spec = state.model.input_spec
    trained = state.model.predictor.spec.max_len
    out, truncated = {}, {}
    for m, dim in spec.modalities.items():
        x = feats.get(m)
        x = np.zeros((0, dim), np.float32) if x is None or x.size == 0 else x.reshape(-1, x.shape[-1])
        keep = min(spec.max_steps[m], int(trained.get(m) or spec.max_steps[m]))
        if x.shape[0] > keep:  # as `mmer predict --media`: the head, up to the longest training sample
            truncated[m] = int(x.shape[0])
            x = x[:keep]
        out[m] = as_steps(x, f"file ({m} features)", m, spec)
    return out, truncated


def require_clip_extractors(state: Any, unit: str, features_fix: str, dialogue_fix: str) -> None:
    """Refuse media for a model that cannot read it: one trained on given features (nothing to
    extract with) or on whole dialogues (one `unit` is not a dialogue). Shared by /v1/predict
    and /v1/timeline, which differ only in what they suggest instead."""
    if state.extractors is None:
        raise RequestError(422, "file", "this model was trained on given features, not on media, so the "
                           f"server cannot extract features from a {unit}", features_fix)
    if state.extractors["extract"].get("level") == "dialogue":
        raise RequestError(422, "file", f"this model was trained on whole dialogues, not on {unit}s",
                           dialogue_fix)
