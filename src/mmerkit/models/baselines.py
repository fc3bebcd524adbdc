"""Neural baselines on the shared model contract: early fusion, late fusion and MulT.

EarlyFusionTransformer ("early_fusion"): every modality is projected to a common width, tagged
with a learned modality embedding and its time position, and the tokens of all modalities go
through ONE transformer encoder (fusion before any modality-specific modelling). Masked mean and
max pooling over all valid tokens feed a linear multi-label head. Missing modalities contribute
no tokens (their mask is all False), so the model needs no special case for them.

It is the simplest sequence model that sees every modality at every step, and the reference
point the CARAT paper's tables start from.

LateFusion ("late_fusion"): one extractor and classifier per modality, logits averaged over the
modalities present (equations and choices in the comment block above the class).

MulT ("mult", Tsai et al., ACL 2019): pairwise cross-modal transformers into every target
modality, a self-attention stage per target, last-step pooling and a residual MLP head
(equations and every departure from the MulT code in the comment block above the class).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from mmerkit.config import ModelConfig
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import MMERModel, ModelOutput, register_model
from mmerkit.models.layers import TransformerEncoder, attention_mask, input_norm


class EarlyFusionConfig(ModelConfig):
    """Early fusion's width and depth (the shared names of every model; old names still load)."""

    renamed_fields: ClassVar[dict[str, str]] = {"hidden": "hidden_size", "heads": "num_heads",
                                                "ffn": "intermediate_size"}

    hidden_size: int = 128
    layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
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
                "in one encoder)", year=None, config=EarlyFusionConfig)
class EarlyFusionTransformer(MMERModel):
    test_params = {"hidden_size": 16, "layers": 1, "intermediate_size": 32, "num_heads": 2, "dropout": 0.0}
    search_space = {"model.hidden_size": {"type": "categorical", "choices": [64, 128, 256]},
                    "model.layers": {"type": "int", "low": 1, "high": 3}}

    def __init__(self, config: EarlyFusionConfig, spec: DataSpec):
        super().__init__(config, spec)
        h = config.hidden_size
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in spec.modalities.items()})
        self.proj = nn.ModuleDict({m: nn.Linear(d, h) for m, d in spec.modalities.items()})
        self.modality_emb = nn.Parameter(torch.randn(len(spec.modalities), h) * 0.02)
        max_len = max([config.max_len, *spec.max_len.values()])
        self.pos_emb = nn.Embedding(max_len, h)
        layer = nn.TransformerEncoderLayer(h, config.num_heads, config.intermediate_size, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(2 * h), nn.Dropout(config.dropout),
                                  nn.Linear(2 * h, spec.num_labels))

    def max_steps(self) -> dict[str, int | None]:
        return dict.fromkeys(self.spec.modality_names, self.pos_emb.num_embeddings)

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


# ---------------------------------------------------------------------------- late fusion
#
# LateFusion ("late_fusion"): the opposite end from early fusion. Each modality has its own
# BERT-style extractor (layers.TransformerEncoder), masked mean+max pooling and linear label
# head, so it predicts every label from that modality alone (logits u_m, (B, L)). The fused
# logits are the mean of u_m over the modalities present for the sample:
#     logits = sum_m present_m u_m / max(1, sum_m present_m)
# Loss: BCE(logits, y) + unimodal_weight * mean over present (sample, modality) of BCE(u_m, y),
# so each branch is a classifier in its own right (the classic late-fusion recipe), not only a
# part of the average. A missing modality drops out of the mean (all missing: logits 0, p = 0.5).
# u_m is `modality_label_scores`. Defaults match early_fusion so the two compare like for like.


class LateFusionConfig(EarlyFusionConfig):
    unimodal_weight: float = 1.0


@register_model("late_fusion", paper="Late-fusion baseline (one transformer and classifier per "
                "modality, logits averaged over the present modalities)", year=None,
                config=LateFusionConfig)
class LateFusion(MMERModel):
    test_params = {"hidden_size": 16, "layers": 1, "intermediate_size": 32, "num_heads": 2, "dropout": 0.0}
    search_space = {**EarlyFusionTransformer.search_space,
                    "model.unimodal_weight": {"type": "float", "low": 0.0, "high": 1.0}}

    def __init__(self, config: LateFusionConfig, spec: DataSpec):
        super().__init__(config, spec)
        c, h = config, config.hidden_size
        max_len = max([c.max_len, *spec.max_len.values()])
        self.norms = nn.ModuleDict({m: input_norm(d) for m, d in spec.modalities.items()})
        self.encoders = nn.ModuleDict({
            m: TransformerEncoder(d, h, c.layers, c.num_heads, c.intermediate_size, c.dropout, max_len)
            for m, d in spec.modalities.items()})
        self.heads = nn.ModuleDict({
            m: nn.Sequential(nn.LayerNorm(2 * h), nn.Dropout(c.dropout), nn.Linear(2 * h, spec.num_labels))
            for m in spec.modalities})

    def max_steps(self) -> dict[str, int | None]:
        return {m: enc.positions.num_embeddings for m, enc in self.encoders.items()}

    def forward(self, batch: Batch) -> ModelOutput:
        pooled, unimodal = [], []
        for m in self.spec.modality_names:
            mask = batch.masks[m]
            h = self.encoders[m](self.norms[m](batch.inputs[m].float()), mask)
            pooled.append(masked_mean_max(h, mask))
            unimodal.append(self.heads[m](pooled[-1]))
        u = torch.stack(unimodal, 1)  # (B, M, L)
        present = batch.present.to(u.device)[..., None].to(u.dtype)
        logits = (u * present).sum(1) / present.sum(1).clamp_min(1.0)
        return ModelOutput(logits=logits, probs=torch.sigmoid(logits),
                           features={"pooled": torch.stack(pooled, 1)},
                           modality_label_scores=u, aux={"present": present})

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        terms = {"bce": F.binary_cross_entropy_with_logits(out.logits, batch.labels)}
        if self.config.unimodal_weight:
            u, present = out.modality_label_scores, out.aux["present"]
            y = batch.labels[:, None, :].expand_as(u)
            per = F.binary_cross_entropy_with_logits(u, y, reduction="none").mean(-1, keepdim=True)
            uni = (per * present).sum() / present.sum().clamp_min(1.0)
            terms["unimodal"] = self.config.unimodal_weight * uni
        terms["total"] = sum(terms.values())
        return terms


# ---------------------------------------------------------------------------- MulT
#
# MulT ("mult"): the Multimodal Transformer (Tsai et al., ACL 2019), the cross-modal baseline
# of the TAILOR and CARAT tables. For modalities m (any M >= 1):
#     e_m   = Drop_embed( sqrt(d) Conv1d_k(x_m) + sinusoid positions )      d = 30, k = 1, no bias
#     CM_{b->a}: `layers` pre-LN layers  z <- z + Drop_res(Attn(LN(z), LN(e_b)));
#                                        z <- z + Drop_res(FFN(LN(z)))      (z starts at e_a)
#     H_a   = SelfTransformer_a([CM_{b->a}(e_a, e_b) for b != a] concatenated on the features)
#     h_a   = H_a at a's last valid step                                      (B, (M-1) d)
#     z     = h + Drop_out(W2 relu(W1 h)),  h = [h_1 | .. | h_M];  logits = W_out z
# Loss: BCE on the logits (MulT itself regressed MOSEI sentiment with L1).
# Departures from the MulT code, and why:
# - Padding masks are honoured (MulT pads nothing); a missing source modality contributes no
#   cross-attention update (its block only runs the feed-forward), a missing target's h_a is 0.
# - MulT's default causal ("future") mask inside the cross-modal attention is not used: an
#   utterance is classified as a whole, so there is no reason to hide later steps.
# - The self-attention stage has `max(layers, 3)` layers, as in MulT; text gets the embedding
#   dropout on its raw input as in MulT, the others only on the embedded sequence.
# - `modality_label_scores` (B, M, L): the output layer split over the M blocks of z
#   (W_out z = sum_a W_out[:, block a] z_a + b), an additive per-modality attribution.
# - M = 1: no cross-modal stage; the self-attention stage runs on e_1 directly.


def sinusoid_positions(t: int, d: int, device: torch.device) -> Tensor:
    """(t, d) sine/cosine table: first half sines, second half cosines (fairseq layout)."""
    half = d // 2
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32)
                     * -(math.log(10000.0) / max(half - 1, 1)))
    ang = torch.arange(1, t + 1, device=device, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([ang.sin(), ang.cos()], 1)
    return F.pad(table, (0, d - 2 * half))


class CrossModalLayer(nn.Module):
    """Pre-LN layer: queries from z, keys/values from a source sequence (self-attention when the
    source is None). `gate` (B,) zeroes the attention update for samples without a source."""

    def __init__(self, d: int, heads: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float):
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.q, self.kv, self.out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.norm_attn, self.norm_ffn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(relu_dropout),
                                 nn.Linear(4 * d, d))
        self.drop = nn.Dropout(res_dropout)

    def forward(self, z: Tensor, src: Tensor | None, src_mask: Tensor, gate: Tensor | None) -> Tensor:
        b, t, d = z.shape
        q_in = self.norm_attn(z)
        kv_in = q_in if src is None else self.norm_attn(src)
        q = self.q(q_in).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.kv(kv_in).view(b, kv_in.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(src_mask),
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = self.drop(self.out(y.transpose(1, 2).reshape(b, t, d)))
        if gate is not None:
            y = y * gate[:, None, None]
        z = z + y
        return z + self.drop(self.ffn(self.norm_ffn(z)))


class CrossModalStack(nn.Module):
    """`layers` CrossModalLayers and a final LayerNorm (MulT's TransformerEncoder)."""

    def __init__(self, d: int, layers: int, heads: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(CrossModalLayer(d, heads, attn_dropout, relu_dropout, res_dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, z: Tensor, src: Tensor | None, src_mask: Tensor, gate: Tensor | None = None):
        for layer in self.layers:
            z = layer(z, src, src_mask, gate)
        return self.norm(z)


class MulTConfig(ModelConfig):
    """MulT's published defaults (its main.py / models.py); BCE replaces its L1 loss."""

    renamed_fields: ClassVar[dict[str, str]] = {"hidden": "hidden_size", "heads": "num_heads"}

    hidden_size: int = 30  # d per modality
    num_heads: int = 5
    layers: int = 5  # nlevels
    kernel_size: int = 1
    attn_dropout: float = 0.1  # text target; audio/visual targets use attn_dropout_other
    attn_dropout_other: float = 0.0
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.2
    out_dropout: float = 0.0
    threshold: float = 0.5

    @model_validator(mode="after")
    def _check(self) -> MulTConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (keeps every step), got {self.kernel_size}")
        return self


@register_model("mult", paper="MulT: Multimodal Transformer for Unaligned Multimodal Language "
                "Sequences (Tsai et al., ACL 2019)", year=2019, config=MulTConfig)
class MulT(MMERModel):
    test_params = {"hidden_size": 16, "num_heads": 2, "layers": 1, "attn_dropout": 0.0, "relu_dropout": 0.0,
                   "res_dropout": 0.0, "embed_dropout": 0.0}
    # MulT names its dropouts per place (no single `dropout`), d must divide by its 5 heads
    search_space = {"model.attn_dropout": {"type": "float", "low": 0.0, "high": 0.3},
                    "model.relu_dropout": {"type": "float", "low": 0.0, "high": 0.3},
                    "model.res_dropout": {"type": "float", "low": 0.0, "high": 0.3},
                    "model.embed_dropout": {"type": "float", "low": 0.0, "high": 0.3},
                    "model.hidden_size": {"type": "categorical", "choices": [30, 40, 50]}}

    def __init__(self, config: MulTConfig, spec: DataSpec):
        super().__init__(config, spec)
        c, d = config, config.hidden_size
        self.mods = spec.modality_names
        M = len(self.mods)
        self.proj = nn.ModuleDict({m: nn.Conv1d(dim, d, c.kernel_size, padding=(c.kernel_size - 1) // 2,
                                                bias=False) for m, dim in spec.modalities.items()})
        self.embed_drop = nn.Dropout(c.embed_dropout)
        # cross[a][b] = CM_{b->a}; an order-preserving list of the other modalities per target
        self.cross = nn.ModuleDict({
            a: nn.ModuleDict({b: CrossModalStack(d, c.layers, c.num_heads, self._attn_drop(i),
                                                 c.relu_dropout, c.res_dropout)
                              for b in self.mods if b != a})
            for i, a in enumerate(self.mods)} if M > 1 else {})
        width = d * max(M - 1, 1)
        self.memory = nn.ModuleDict({
            a: CrossModalStack(width, max(c.layers, 3), c.num_heads, self._attn_drop(i),
                               c.relu_dropout, c.res_dropout) for i, a in enumerate(self.mods)})
        self.proj1, self.proj2 = nn.Linear(M * width, M * width), nn.Linear(M * width, M * width)
        self.out_drop = nn.Dropout(c.out_dropout)
        self.out = nn.Linear(M * width, spec.num_labels)

    def _attn_drop(self, i: int) -> float:
        return self.config.attn_dropout if i == 0 else self.config.attn_dropout_other

    def _embed(self, x: Tensor, m: str) -> Tensor:
        d = self.config.hidden_size
        if m == self.mods[0]:
            x = self.embed_drop(x)
        e = self.proj[m](x.float().transpose(1, 2)).transpose(1, 2)[:, : x.shape[1]]
        return self.embed_drop(math.sqrt(d) * e + sinusoid_positions(e.shape[1], d, e.device))

    def forward(self, batch: Batch) -> ModelOutput:
        present = batch.present.to(batch.labels.device)
        e = {m: self._embed(batch.inputs[m], m) for m in self.mods}
        hs = []
        for i, a in enumerate(self.mods):
            mask = batch.masks[a]
            if len(self.mods) > 1:
                parts = [self.cross[a][b](e[a], e[b], batch.masks[b], present[:, j].to(e[a].dtype))
                         for j, b in enumerate(self.mods) if b != a]
                seq = torch.cat(parts, -1)
            else:
                seq = e[a]
            h = self.memory[a](seq, None, mask)
            last = (mask.sum(1) - 1).clamp_min(0)
            h_last = h[torch.arange(h.shape[0], device=h.device), last]
            hs.append(h_last * present[:, i, None].to(h.dtype))
        h = torch.cat(hs, -1)
        z = h + self.out_drop(self.proj2(self.out_drop(F.relu(self.proj1(h)))))
        logits = self.out(z)
        M = len(self.mods)
        blocks = z.view(z.shape[0], M, -1)  # (B, M, width)
        w = self.out.weight.view(-1, M, blocks.shape[-1])  # (L, M, width)
        scores = torch.einsum("bmw,lmw->bml", blocks, w)
        return ModelOutput(logits=logits, probs=torch.sigmoid(logits), features={"fused": z},
                           modality_label_scores=scores)
