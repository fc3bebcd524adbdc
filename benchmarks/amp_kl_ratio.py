"""AMP at init: the parameter-perturbation KL term against the asymmetric loss, at the release's
width and recipe (amp-authors), on random MOSEI-shaped batches of 16 (benchmarks/throughput.py),
three seeds. Quoted in models/amp.py.

    python benchmarks/amp_kl_ratio.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from throughput import LABELS, SHAPE, make_batch

from mmerkit.data.store import DataSpec
from mmerkit.models.base import create_model

ratios = []
for seed in (0, 1, 2):
    torch.manual_seed(seed)
    spec = DataSpec(LABELS, dict(SHAPE), True, {m: 50 for m in SHAPE})
    model = create_model("amp", spec, preset="amp-authors").train()
    batch = make_batch(16, 50, seed)
    terms = model.loss(model(batch), batch)
    ratios.append(float(terms["app"] / terms["asl"]))
    print(seed, {k: float(v) for k, v in terms.items()})
print("app / asl:", [f"{r:.2e}" for r in ratios])
