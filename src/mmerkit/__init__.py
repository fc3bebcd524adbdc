"""mmerkit: multi-modal multi-label emotion recognition (CARAT, TAILOR, RAMer and baselines).

The public API, importable from the package (loaded on first use, so `import mmerkit` stays
light and `mmerkit.__version__` needs no torch):

    api                                   the Python twin of every `mmer` command
    train evaluate predict report ablate plot data_synth data_convert data_inspect
    Predictor Predictions                 inference from an export directory
    FeatureStore                          the on-disk data format
    RunConfig load_config                 configuration
    Run RunResult                         a run directory and what training returns
    list_models create_model MMERModel ModelOutput register_model
    MMERError DataError ConfigError CheckpointError

Example:
    >>> import mmerkit
    >>> [run] = mmerkit.train("early_fusion", "store", epochs=2)             # doctest: +SKIP
    >>> mmerkit.Predictor.from_pretrained(run.run_dir / "export")           # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# OpenMP threads (torch's intra-op pool, BLAS) spin while they wait for each other unless told
# otherwise; on cores other processes also use, the spinning takes the time the working threads
# need. One epoch of the demo at a load of 12 on 2 cores: 294 s spinning, 76 s with PASSIVE
# (benchmarks/threads.md). It must be set before torch loads its OpenMP runtime, and this module
# is imported first by `mmer`, `python -m mmerkit` and every worker process; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "api": ("mmerkit.api", None),
    **{name: ("mmerkit.api", name) for name in (
        "train", "evaluate", "predict", "report", "ablate", "plot", "data_synth", "data_convert",
        "data_inspect", "load_run")},
    "Predictor": ("mmerkit.predict", "Predictor"),
    "Predictions": ("mmerkit.predict", "Predictions"),
    "FeatureStore": ("mmerkit.data.store", "FeatureStore"),
    "RunConfig": ("mmerkit.config", "RunConfig"),
    "load_config": ("mmerkit.config", "load_config"),
    "Run": ("mmerkit.run", "Run"),
    "RunResult": ("mmerkit.run", "RunResult"),
    "list_models": ("mmerkit.models.base", "list_models"),
    "create_model": ("mmerkit.models.base", "create_model"),
    "register_model": ("mmerkit.models.base", "register_model"),
    "MMERModel": ("mmerkit.models.base", "MMERModel"),
    "ModelOutput": ("mmerkit.models.base", "ModelOutput"),
    **{name: ("mmerkit.errors", name) for name in ("MMERError", "DataError", "ConfigError", "CheckpointError")},
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmerkit' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted(__all__)
