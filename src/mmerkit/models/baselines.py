"""Neural baselines on the shared model contract.

EarlyFusionTransformer ("early_fusion"): every modality is projected to a common width, tagged
with a learned modality embedding and its time position, and the tokens of all modalities go
through ONE transformer encoder (fusion before any modality-specific modelling). Masked mean and
max pooling over all valid tokens feed a linear multi-label head. Missing modalities contribute
no tokens (their mask is all False), so the model needs no special case for them.

It is the simplest sequence model that sees every modality at every step, and the reference
point the CARAT paper's tables start from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmerkit.config import ModelConfig
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import MMERModel, ModelOutput, register_model


class EarlyFusionConfig(ModelConfig):
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 256
    dropout: float = 0.1
    max_len: int = 512
    threshold: float = 0.5


def masked_mean_max(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) bool -> (B, 2D) mean and max over valid steps; zeros where none is valid."""
    m = mask.unsqueeze(-1).to(x.dtype)
    count = m.sum(1).clamp_min(1.0)
    mean = (x * m).sum(1) / count
    neg = torch.finfo(x.dtype).min
    mx = x.masked_fill(~mask.unsqueeze(-1), neg).amax(1)
    mx = torch.where(mask.any(1, keepdim=True), mx, torch.zeros_like(mx))
    return torch.cat([mean, mx], -1)


@register_model("early_fusion", paper="Early-fusion transformer baseline (tokens of all modalities "
                "in one encoder)", year=2017, config=EarlyFusionConfig)
class EarlyFusionTransformer(MMERModel):
    test_params = {"hidden": 16, "layers": 1, "ffn": 32, "heads": 2, "dropout": 0.0}

    def __init__(self, config: EarlyFusionConfig, spec: DataSpec):
        super().__init__(config, spec)
        h = config.hidden
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in spec.modalities.items()})
        self.proj = nn.ModuleDict({m: nn.Linear(d, h) for m, d in spec.modalities.items()})
        self.modality_emb = nn.Parameter(torch.randn(len(spec.modalities), h) * 0.02)
        max_len = max([config.max_len, *spec.max_len.values()])
        self.pos_emb = nn.Embedding(max_len, h)
        layer = nn.TransformerEncoderLayer(h, config.heads, config.ffn, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(2 * h), nn.Dropout(config.dropout),
                                  nn.Linear(2 * h, spec.num_labels))

    def forward(self, batch: Batch) -> ModelOutput:
        tokens, masks = [], []
        for i, m in enumerate(self.spec.modality_names):
            x = batch.inputs[m]
            pos = self.pos_emb(torch.arange(x.shape[1], device=x.device))
            tokens.append(self.proj[m](self.norms[m](x)) + pos + self.modality_emb[i])
            masks.append(batch.masks[m])
        x, mask = torch.cat(tokens, 1), torch.cat(masks, 1)
        # a sample with no valid token at all would give NaN attention: let it attend to itself
        empty = ~mask.any(1, keepdim=True)
        attn_mask = mask | empty
        h = self.encoder(x, src_key_padding_mask=~attn_mask)
        pooled = masked_mean_max(h, mask)
        logits = self.head(pooled)
        return ModelOutput(logits=logits, probs=torch.sigmoid(logits), features={"pooled": pooled})
