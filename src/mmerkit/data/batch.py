"""Batches: padded tensors, boolean masks and modality-present flags, read lazily from a store.

`StoreDataset` reads whole batches from the memory map at once (`__getitems__`), so one batch
costs one fancy-indexed read per array instead of B small ones. Sequences are trimmed to the
longest valid length in the batch, so variable-length corpora (dialogues) waste no compute.

Example:
    >>> from torch.utils.data import DataLoader
    >>> ds = StoreDataset(FeatureStore("store"), "train")        # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=64, collate_fn=collate)  # doctest: +SKIP
    >>> batch = next(iter(loader)); batch.inputs["text"].shape     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

from mmerkit.data.store import FeatureStore, StoreSplit


@dataclass
class Batch:
    """A padded mini-batch; modality order is `modalities` everywhere (inputs, present, scores)."""

    inputs: dict[str, Tensor]  # modality -> (B, T_m, D_m) float32, zero padded
    masks: dict[str, Tensor]  # modality -> (B, T_m) bool, True = valid step
    present: Tensor  # (B, M) bool, False = modality missing for that sample
    labels: Tensor  # (B, L) float32 multi-hot
    index: Tensor  # (B,) int64 row of each sample in its split
    modalities: tuple[str, ...]
    extras: dict[str, Tensor] = field(default_factory=dict)  # name -> (B, D) side inputs

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        def move(x):
            if isinstance(x, Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def pin_memory(self) -> Batch:
        def pin(x):
            if isinstance(x, Tensor):
                return x.pin_memory()
            if isinstance(x, dict):
                return {k: pin(v) for k, v in x.items()}
            return x

        return Batch(**{f.name: pin(getattr(self, f.name)) for f in fields(self)})

    def without(self, modality: str) -> Batch:
        """The same batch with one modality removed (zeros, masks False, present False)."""
        m = self.modalities.index(modality)
        present = self.present.clone()
        present[:, m] = False
        inputs = dict(self.inputs, **{modality: torch.zeros_like(self.inputs[modality])})
        masks = dict(self.masks, **{modality: torch.zeros_like(self.masks[modality])})
        return Batch(inputs, masks, present, self.labels, self.index, self.modalities, self.extras)


class StoreDataset(torch.utils.data.Dataset):
    """One split of a FeatureStore; items are read lazily from the memory map.

    Works with any sampler, including `DistributedSampler`: it only needs `len` and indices.
    `__getitems__` lets the DataLoader fetch a whole batch in one read per array.
    """

    def __init__(self, store: FeatureStore | str, split: str, modalities: tuple[str, ...] | None = None):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.split_name = split
        self.modalities = tuple(modalities or self.store.modalities)
        unknown = [m for m in self.modalities if m not in self.store.modalities]
        if unknown:
            from mmerkit.errors import ConfigError
            from mmerkit.registry import did_you_mean

            have = list(self.store.modalities)
            raise ConfigError(f"data.modalities lists {unknown[0]!r}, which {self.store.path} does not have."
                              f"{did_you_mean(unknown[0], have)} Modalities: {', '.join(have)}")
        self.split: StoreSplit = self.store.split(split)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # sorted reads are sequential on disk
        sorted_idx = idx[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out = {"index": idx, "labels": np.asarray(self.split.labels[sorted_idx])[inverse], "modalities": self.modalities}
        for m in self.modalities:
            lens = np.asarray(self.split.lengths[m][sorted_idx])[inverse]
            t = max(int(lens.max()), 1)
            out[f"x:{m}"] = np.asarray(self.split.features[m][sorted_idx, :t])[inverse]
            out[f"len:{m}"] = lens
        for e, v in self.split.extras.items():
            out[f"extra:{e}"] = np.asarray(v[sorted_idx])[inverse]
        return out


def collate(items: dict | list[dict]) -> Batch:
    """Turn raw arrays (from `StoreDataset.__getitems__`, or a list of single items) into a Batch."""
    if isinstance(items, list):
        items = _concat_items(items)
    modalities = tuple(items["modalities"])
    inputs, masks, present = {}, {}, []
    for m in modalities:
        lens = torch.as_tensor(items[f"len:{m}"], dtype=torch.long)
        # np.require copies read-only inputs (memmaps, user arrays) so torch never aliases them
        x = torch.from_numpy(np.require(items[f"x:{m}"], np.float32, ["C", "W"]))
        inputs[m] = x
        masks[m] = torch.arange(x.shape[1])[None, :] < lens[:, None]
        present.append(lens > 0)
    extras = {k[6:]: torch.from_numpy(np.require(v, np.float32, ["C", "W"]))
              for k, v in items.items() if k.startswith("extra:")}
    return Batch(
        inputs=inputs,
        masks=masks,
        present=torch.stack(present, 1),
        labels=torch.from_numpy(np.asarray(items["labels"], dtype=np.float32)),
        index=torch.as_tensor(items["index"], dtype=torch.long),
        modalities=modalities,
        extras=extras,
    )


def _concat_items(items: list[dict]) -> dict:
    """Merge single-sample dicts, padding sequences to the longest one."""
    out = {"modalities": items[0]["modalities"]}
    for key in items[0]:
        if key == "modalities":
            continue
        arrays = [it[key] for it in items]
        if key.startswith("x:"):
            t = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (0, t - a.shape[1]), (0, 0))) for a in arrays]
        out[key] = np.concatenate(arrays, 0)
    return out
