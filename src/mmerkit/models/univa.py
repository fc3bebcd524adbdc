"""UniVA: A Unimodal Valence-Arousal Driven Contrastive Learning Framework for Multimodal
Multi-Label Emotion Recognition (Zheng, Yu, Xia, ACM MM 2024).

Implemented from specs/univa_lddu.md, Part A (the release `NUSTM/UniVA` is the ground truth;
section numbers below refer to the spec). For every modality m of the store (the release's
text / audio / vision; any M >= 1 works, slots follow the DataSpec order):

    u_m  = Drop_fc(W_in^m x_m) + P_m[:T]               (B, T, H)   A2, learned positions N(0, 1)
    h_m  = PostLN-Transformer_m(u_m)  (L_m layers)      (B, T, H)   additive -10000 mask on pads
    f_m  = sum_t alpha_t h_m[t],  alpha = softmax_t(w . tanh(P h_m[t] + Q q) + b_w)
                                                          (B, H)      additive attention pooling
    z    = Drop_final(W [f_1 ; .. ; f_M] + b)             (B, C)      dropout on the logits
    s    = log_softmax(z);  prediction  exp(s_c) > 0.18                A5

Losses (A3; s = log-probs, y = multi-hot):

    kl      = kl_weight * mean_{b,c} p*_bc (log p*_bc - s_bc),  p* = softmax(y)   (1000 x KL)
    reg     = (1/B) sum_{i,j} M_ij ||s_:i - s_:j||_2        norm over the BATCH axis; M trainable
    supcon  = sum_m w_m L_m / M,  L_m = VA-aware SupCon of f_m (unnormalised), both "views" = f_m:
              Pos_ij = [i = j or ||va_i - va_j|| < va_threshold];  contrast set [f; f] without
              the anchor's first copy, so its second copy is always a positive
    total   = (1 - alpha) (kl + reg) + alpha supcon

with the text weight 3 (the release's MOSEI aggregation; M3ED uses 1). The threshold 0.18 is
made for 6 labels: the target softmax(y) of a one-label sample puts each negative at
1/(e + L - 1) = 0.130 and its positive at e/(e + L - 1) = 0.352. For another label count L pick
a value between those (or `train.threshold: search`, chosen on validation). The label-similarity
matrix M (`label_similarity: true`) is built from the release's emotion valence-arousal table
for the store's labels by name (`label_similarity_matrix`): each dimension min-max scaled to
[-1, 1] over the labels, then cosine similarity. `va_table` in the config adds or replaces
entries; a store label without an entry is an error naming it.

The side input, one valence-arousal pair per sample and modality (`va_source`):
- `store`: the store's extra arrays `va_<modality>` (N, 2), as RAMer reads personality vectors;
- `labels` (the spec's substitute, A1.1 option 2): the mean VA point of the sample's positive
  labels from the table (neutral (0.5, 0.5) for none), the same for every modality;
- `auto` (default): `store` when the store has any `va_*` extra, else `labels`.
Either way the pairs are z-scored with the valence column's mean and unbiased std for BOTH
columns, the release's quirk (A1.1; `va_norm`).

Defaults are the release's MOSEI GloVe script (run_MOSEI_TAV_ours_glove.sh): H 768, 12 heads,
FFN 3072, dropouts 0.1, text / audio / visual layers 7 / 3 / 5, temperature 0.4, alpha 0.2,
no label-similarity regulariser, threshold 0.18. The `univa-authors` preset adds its optimiser
and loop (AdamW eps 1e-6 without weight decay, lr 7e-5, 10% warm-up + linear decay, clip 1,
batch 32, 15 epochs, seed 1111); `configs/models/univa.yaml`, mmerkit's recipe, is the same
loop with one departure: the decision threshold is chosen on validation (`train.threshold:
search`), since the release's 0.18 is made for six labels and predicts every label of a
two-label store (the AVEC/IEMOCAP labels; README, "Robustness"). On the six embedded labels the
search lands at 0.20 and moves the test micro-F1 within a seed's spread.

The text branch reads the store's text features through the same encoder as the other
modalities (the release's GloVe path). The release's RoBERTa-over-the-dialogue branch is not
built: it fine-tunes roberta-base over whole dialogues (token ids and per-utterance flag masks
that no mmerkit store holds) and no offline encoder serves it here; a store of pre-extracted
RoBERTa token features goes through the GloVe-path encoder like any other text features.

Departures from the release, and why:
- VA normalisation uses the statistics of the current batch (the release z-scores per split in
  its data loader; a model sees batches). `va_norm: none` takes the store's values as they are
  (normalise them per split when writing the store for the release's exact behaviour). A batch
  whose valences are all equal is centred but not scaled (the release would divide by 0).
- Missing modalities (the release has none): the pooled vector of a missing modality is zero,
  so the head ignores it, and its samples leave that modality's contrastive term (rows and
  columns); labels-derived VA is used for every modality.
- The contrastive term is computed from the (B, B) similarity matrix alone (the 2B contrast
  copies are identical, so every sum over them is twice a sum over B minus the removed self
  term): same value and gradient as the release's (B, 2B) formulation.
- The pooling takes no `.squeeze()` without a dimension, so a batch of one works (A6.9).
- Fused QKV matmul and scaled_dot_product_attention in the encoder layers (same values);
  torch's LayerNorm (eps inside the square root, as the release's TF-style LayerNorm).
- Layer initialisation: the release deep-copies one freshly initialised layer, so all layers of
  an encoder start identical; `identical_layer_init: true` (default) keeps that.
- Weight decay skips biases and normalisation gains (the release uses weight decay 0 anyway).
- Not here but elsewhere: evaluation is gathered over all processes (the release evaluates and
  selects on each GPU's shard, A6.4-6); accuracy with 0/0 = 0 is `metrics.compute_metrics(...,
  empty="reference")` (A5).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmerkit.config import ModelConfig
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.errors import ConfigError
from mmerkit.models.base import MMERModel, ModelOutput, register_model
from mmerkit.models.layers import EncoderLayer, attention_mask

# The release's emotion -> (valence, arousal) table (utils/generate_label_similar_matrix.py).
VA_TABLE: dict[str, tuple[float, float]] = {
    "happy": (1.000, 0.735), "sad": (0.225, 0.333), "anger": (0.167, 0.865),
    "surprise": (0.875, 0.875), "disgust": (0.052, 0.775), "fear": (0.073, 0.840),
    "neutral": (0.5, 0.5),
}
NEUTRAL_VA = (0.5, 0.5)  # a sample with no positive label (spec A1.1)


class UnivaConfig(ModelConfig):
    """UniVA hyper-parameters; defaults are the release's MOSEI GloVe run script."""

    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    layers: dict[str, int] = Field(default_factory=lambda: {"text": 7, "audio": 3, "visual": 5})
    default_layers: int = 4  # for modalities not named in `layers` (main.py's text/audio default)
    dropout: float = 0.1  # hidden and attention-probability dropout inside the encoder layers
    fc_dropout: float = 0.1  # after each input projection
    final_dropout: float = 0.1  # on the logits
    default_max_positions: int = 512  # position table rows when the store gives no max length
    identical_layer_init: bool = True  # the release deep-copies one layer into every slot
    threshold: float = 0.18
    kl_weight: float = 1000.0
    # label-VA-similarity regulariser (--labelSimilar_regulari; off in the MOSEI GloVe script)
    label_similarity: bool = False
    va_table: dict[str, tuple[float, float]] = Field(default_factory=dict)  # label -> (V, A)
    # VA-aware supervised contrastive loss (--SupConLoss --vaAug)
    supcon: bool = True
    temperature: float = Field(0.4, gt=0)
    va_threshold: float = Field(0.1, ge=0)  # thres_dist
    alpha: float = Field(0.2, ge=0, le=1)
    supcon_modality_weights: dict[str, float] = Field(default_factory=lambda: {"text": 3.0})
    va_source: Literal["auto", "store", "labels"] = "auto"
    va_prefix: str = "va_"  # store extras va_<modality>, (N, 2) each
    va_norm: Literal["batch", "none"] = "batch"


# ----------------------------------------------------------------------------- the VA table


def va_points(labels: tuple[str, ...] | list[str], extra: dict | None = None) -> Tensor:
    """(L, 2) valence-arousal points of `labels` by name (case-insensitive): the release's table
    updated with `extra`. A label with no entry is a ConfigError that names it and the fix."""
    table = {k.lower(): tuple(v) for k, v in {**VA_TABLE, **(extra or {})}.items()}
    missing = [name for name in labels if name.lower() not in table]
    if missing:
        raise ConfigError(f"univa: no valence-arousal point for label(s) {', '.join(map(repr, missing))}; "
                          f"the release's table covers {', '.join(VA_TABLE)}. Pass them with "
                          f"model.va_table (e.g. --set 'model.va_table={{{missing[0]}: [0.5, 0.5]}}')")
    return torch.tensor([table[name.lower()] for name in labels], dtype=torch.float32)


def label_similarity_matrix(points: Tensor) -> Tensor:
    """The release's prior M (C, C): each VA dimension min-max scaled to [-1, 1] over the label
    set, then the cosine similarity of every pair of labels."""
    lo, hi = points.min(0).values, points.max(0).values
    scaled = 2 * (points - lo) / (hi - lo).clamp_min(1e-12) - 1
    unit = F.normalize(scaled.double(), dim=1)
    return (unit @ unit.T).float()


def labels_to_va(y: Tensor, points: Tensor) -> Tensor:
    """(B, 2) mean VA point of each sample's positive labels (y > 0.5); neutral when none."""
    pos = (y > 0.5).to(points.dtype)
    count = pos.sum(1, keepdim=True)
    mean = pos @ points / count.clamp_min(1)
    return torch.where(count > 0, mean, mean.new_tensor(NEUTRAL_VA))


def normalise_va(va: Tensor) -> Tensor:
    """Z-score BOTH columns with the valence column's mean and unbiased std (release quirk);
    a constant valence column is only centred."""
    v = va[:, 0]
    std = v.std() if len(v) > 1 else v.new_zeros(())
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (va - v.mean()) / std


# ----------------------------------------------------------------------------- losses


def multilabel_kl(log_probs: Tensor, y: Tensor) -> Tensor:
    """mean_{b,c} p* (log p* - s) with p* = softmax(y) over labels (KLDivLoss 'mean'), unscaled."""
    target = y.to(log_probs.dtype).softmax(-1)  # every entry > 0, so no 0 log 0 to guard
    return (target * (target.log() - log_probs)).mean()


def label_similarity_regulariser(log_probs: Tensor, matrix: Tensor) -> Tensor:
    """(1/B) sum_{i,j} M_ij ||s[:, i] - s[:, j]||_2, the norm over the batch axis."""
    diff = log_probs[:, :, None] - log_probs[:, None, :]  # (B, C, C)
    return (torch.linalg.vector_norm(diff, dim=0) * matrix).sum() / log_probs.shape[0]


def va_supcon_loss(f: Tensor, va: Tensor, temperature: float, va_threshold: float,
                   keep: Tensor | None = None) -> Tensor:
    """The release's VA-aware SupCon with both views equal to `f` (B, H), not normalised.

    Positives: i == j or ||va_i - va_j|| < va_threshold. The contrast set is [f; f] without the
    anchor's first copy. Because both halves are the same vectors, every sum over the 2B
    columns is twice the sum over B minus the removed self term, so only (B, B) is built.
    `keep` (B,) bool drops samples (rows and columns) from the term.
    """
    if f.dtype != torch.float64:  # always at least float32: logits reach ||f||^2 / tau
        f = f.float()
    if keep is not None:
        f, va = f[keep], va[keep]
    if f.shape[0] == 0:
        return f.sum() * 0.0
    logits = f @ f.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    diag = logits.diagonal()
    denom = 2 * logits.exp().sum(1) - diag.exp()
    log_norm = torch.log(denom + 1e-10)
    va = va.to(f.dtype)
    pos = torch.cdist(va, va, compute_mode="donot_use_mm_for_euclid_dist") < va_threshold
    pos = pos | torch.eye(len(f), dtype=torch.bool, device=f.device)
    pos = pos.to(f.dtype)
    logp = logits - log_norm[:, None]
    num = 2 * (pos * logp).sum(1) - logp.diagonal()
    return -(num / (2 * pos.sum(1) - 1 + 1e-10)).mean()


def univa_total(kl: Tensor, reg: Tensor | float, supcon: Tensor | float, alpha: float) -> Tensor:
    """(1 - alpha)(kl + reg) + alpha supcon (the regulariser inside the (1 - alpha) factor)."""
    return (1 - alpha) * (kl + reg) + alpha * supcon


# ----------------------------------------------------------------------------- modules


class AdditivePool(nn.Module):
    """Additive attention pooling: alpha = softmax_t(w . tanh(P x_t + Q q) + b_w), out = sum_t
    alpha_t x_t (the un-projected inputs). Padded steps get -1e9 (an all-padded row: uniform)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(hidden))
        self.P, self.Q, self.w = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        scores = self.w(torch.tanh(self.P(x) + self.Q(self.query))).squeeze(-1)  # (B, T)
        if mask is not None:
            scores = scores.masked_fill(~mask, -1e9)
        return (scores.softmax(-1)[:, :, None] * x).sum(1)


class UnimodalEncoder(nn.Module):
    """Linear(D -> H) + dropout, plus learned positions (no LayerNorm after the add), then post-LN
    layers; PyTorch default initialisation (the release has no custom init)."""

    def __init__(self, in_dim: int, c: UnivaConfig, layers: int, max_positions: int):
        super().__init__()
        H = c.hidden_size
        self.embed, self.drop = nn.Linear(in_dim, H), nn.Dropout(c.fc_dropout)
        self.positions = nn.Embedding(max_positions, H)
        self.layers = nn.ModuleList(EncoderLayer(H, c.num_heads, c.intermediate_size, c.dropout)
                                    for _ in range(layers))
        if c.identical_layer_init:
            for layer in self.layers[1:]:
                layer.load_state_dict(self.layers[0].state_dict())

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        t = x.shape[1]
        if t > self.positions.num_embeddings:
            raise ValueError(f"sequence of {t} steps exceeds the {self.positions.num_embeddings}-row "
                             "position table; raise model.default_max_positions")
        h = self.drop(self.embed(x)) + self.positions.weight[:t]
        attn = attention_mask(mask)
        for layer in self.layers:
            h = layer(h, attn)
        return h


@register_model("univa", paper="A Unimodal Valence-Arousal Driven Contrastive Learning Framework for "
                "Multimodal Multi-Label Emotion Recognition (Zheng, Yu, Xia, ACM MM 2024)",
                year=2024, config=UnivaConfig)
class UniVA(MMERModel):
    """UniVA for any DataSpec with M >= 1 modalities (see the module docstring)."""

    default_threshold = 0.18
    config: UnivaConfig
    test_params: ClassVar[dict] = {
        "hidden_size": 16, "num_heads": 2, "intermediate_size": 32,
        "layers": {"text": 1, "visual": 1, "audio": 1}, "label_similarity": True,
        # the tests' 4 labels: a one-label target puts its negatives at 1/(e+3) = 0.175, so 0.18
        # (made for 6 labels, where they sit at 0.130) would be a coin toss
        "threshold": 0.21}

    def __init__(self, config: UnivaConfig, spec: DataSpec):
        super().__init__(config, spec)
        c = config
        self.mods = spec.modality_names
        M, L, H = len(self.mods), spec.num_labels, c.hidden_size
        self.num_mods, self.num_labels = M, L
        self.encoders = nn.ModuleDict({
            m: UnimodalEncoder(spec.modalities[m], c, c.layers.get(m, c.default_layers),
                               spec.max_len.get(m) or c.default_max_positions) for m in self.mods})
        self.pools = nn.ModuleDict({m: AdditivePool(H) for m in self.mods})
        self.fc = nn.Linear(M * H, L)
        self.final_drop = nn.Dropout(c.final_dropout)
        self.va_keys = self._va_keys(spec)
        needs_table = c.label_similarity or (c.supcon and self.va_keys is None)
        points = va_points(spec.labels, c.va_table) if needs_table else torch.zeros(L, 2)
        self.register_buffer("va_table", points)
        if c.label_similarity:  # trainable, in the optimiser (the release's nn.Parameter)
            self.label_similarity = nn.Parameter(label_similarity_matrix(points))
        self.supcon_weights = [c.supcon_modality_weights.get(m, 1.0) for m in self.mods]

    def _va_keys(self, spec: DataSpec) -> list[str] | None:
        """The store extras holding each modality's VA pairs, or None for label-derived VA."""
        c = self.config
        if not c.supcon or c.va_source == "labels":
            return None
        keys = [f"{c.va_prefix}{m}" for m in self.mods]
        have = [k for k in keys if k in spec.extras]
        if c.va_source == "auto" and not have:
            return None
        missing = [k for k in keys if k not in spec.extras]
        wrong = [k for k in have if spec.extras[k] != 2]
        if missing or wrong:
            raise ConfigError(
                f"univa: model.va_source={c.va_source} reads one (valence, arousal) pair per sample from the "
                f"store extras {', '.join(keys)}; "
                + (f"the store lacks {', '.join(missing)}" if missing else
                   f"{wrong[0]} has {spec.extras[wrong[0]]} columns, expected 2")
                + ". Add them, or set model.va_source=labels to derive VA from the labels")
        return keys

    def max_steps(self) -> dict[str, int | None]:
        return {m: enc.positions.num_embeddings for m, enc in self.encoders.items()}

    def forward(self, batch: Batch) -> ModelOutput:
        present = batch.present.to(batch.labels.device)
        pooled = []
        for i, m in enumerate(self.mods):
            mask = batch.masks[m]
            h = self.encoders[m](batch.inputs[m].float(), mask)
            f = self.pools[m](h, mask)
            pooled.append(f * present[:, i, None].to(f.dtype))  # a missing modality adds nothing
        f = torch.stack(pooled, 1)  # (B, M, H)
        logits = self.final_drop(self.fc(f.flatten(1)))
        log_probs = logits.log_softmax(-1)
        weight = self.fc.weight.view(self.num_labels, self.num_mods, -1)
        scores = torch.einsum("bmh,lmh->bml", f, weight)  # each modality's share of the logits
        return ModelOutput(logits=logits, probs=log_probs.exp(), features={"pooled": f},
                           modality_label_scores=scores,
                           aux={"log_probs": log_probs, "pooled": f, "present": present})

    def batch_va(self, batch: Batch) -> list[Tensor]:
        """(B, 2) VA pairs of each modality, normalised as configured."""
        if self.va_keys is None:
            va = labels_to_va(batch.labels.float(), self.va_table)
            vas = [va] * self.num_mods
        else:
            vas = [batch.extras[k].float() for k in self.va_keys]
        return [normalise_va(v) if self.config.va_norm == "batch" else v for v in vas]

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        c, a = self.config, out.aux
        s = a["log_probs"].float()
        terms = {"kl": c.kl_weight * multilabel_kl(s, batch.labels.float())}
        reg = label_similarity_regulariser(s, self.label_similarity) if c.label_similarity else 0.0
        if c.label_similarity:
            terms["label_similarity"] = reg
        supcon = 0.0
        if c.supcon and c.alpha:
            present = a["present"]
            per_mod = [w * va_supcon_loss(a["pooled"][:, i], va, c.temperature, c.va_threshold,
                                          None if bool(present[:, i].all()) else present[:, i])
                       for i, (w, va) in enumerate(zip(self.supcon_weights, self.batch_va(batch)))]
            supcon = torch.stack(per_mod).sum() / self.num_mods
            terms["supcon"] = supcon
        terms["total"] = univa_total(terms["kl"], reg, supcon, c.alpha)
        return terms
