"""Shared fixtures: a tiny synthetic FeatureStore that any test may read (never write)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmerkit.data.synthetic import SynthConfig, write_synthetic

TINY_SYNTH = SynthConfig(samples=160, split=(0.6, 0.2, 0.2), seq_len=8, seed=0)


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests need CUDA: skipped (with the reason) on machines without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """Path of a small synthetic store: 96 train / 32 valid / 32 test samples, T = 8,
    modalities text 300 / visual 35 / audio 74, the six MOSEI labels. Treat it as read-only."""
    path = tmp_path_factory.mktemp("tiny") / "synthetic"
    write_synthetic(path, TINY_SYNTH)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs torch on one thread: tiny models gain nothing from more, and CI has 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store, finished early_fusion run directory) on the toy store, one per test module that
    asks for it (a module may write into its own run, e.g. a saved threshold)."""
    from helpers import API_QUIET, TINY, toy_store

    from mmerkit import api

    root = tmp_path_factory.mktemp("trained")
    store = toy_store(root / "store")
    [res] = api.train("early_fusion", store.path, out=root / "runs", epochs=1, overrides=TINY, **API_QUIET)
    return store, Path(res.run_dir)
