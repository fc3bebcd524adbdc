"""LDDU: Latent Distribution Decoupling (Huang et al., Findings of ACL 2025).

Implemented from specs/univa_lddu.md Part B (the release, 201983290498/lddu_mmer, as the spec
describes its `MyModel`; section numbers below are the spec's). For modalities m in DataSpec
order and labels l = 1..L (the store's labels):

    x_m   = LayerNorm(inputs_m)                               B2.1, eps 1e-12
    H_m   = Transformer_m(x_m)             (B, T, d)           B2.2, post-LN BERT layers, d = 256
    E     = label table (L, d), xavier                         B2.3
    A_m   = softmax_T((W^l_m E)(W^s_m H_m)^T / sqrt(d))        B2.4, label-wise attention
    Z_m   = W^o_m Drop_0.1(A_m W^s_m H_m)      (B, L, d)       values are the projected keys
    g_m   = ReLU(Lin_k) o ReLU(Lin_(d+k)/2) ... of Z_m          B2.5: d -> (d+k)/2 -> k -> k
    mu_m  = Lin(g_m), log var_m = Lin(g_m), sigma_m = exp(log var_m / 2)      (B, L, k), k = 128
    c     = sigmoid(Lin_1(ReLU(Drop_0.1(Lin_k([Z_1 | .. | Z_M])))))         (B, L) B2.6
    r^mu_l    = sigmoid(MLP_l([mu_1 | .. | mu_M]_l)),  r^sigma_l likewise   B2.7, one MLP per label
    y^    = r^mu * c + r^sigma * (1 - c),  predicted labels y^ > 0.21       B2.8

Losses (the keys of `loss()`, each already weighted; B3):
    final  final_weight (1.0) * BCE(y^, y)                    mean over B x L, on probabilities
    cml    cml_weight (0.3) * BCE(c, y)
    cdl    cdl_weight (1.0) * SupCon over rows [mu/|mu| ; sigma/|sigma|] of every (sample,
           modality, label), class l + L (2m + [y_l < 0.5]), pool = rows + the queue (8192 rows,
           detached), every pool row an anchor, logits r_i . r_j / 2 / tau (tau 0.07), mean over
           all anchors (those without positives add 0 and count)
    crl    crl_weight (0.3) * (KL(q || u) + KL(u || q)) / 2 / (B L), u = softmax over all B x L
           entries of |[sigma_1 | .. | sigma_M]_{b,l}|, q = softmax_L(c) per sample, flattened
The optimiser is BertAdam (optim.py: Adam without bias correction, per-tensor clip 1.0) with
the release's `warmup_cosine` schedule (optim.lr_lambda: linear warm-up over 10% of the steps,
then 0.5 (1 + cos(pi x)) of the progress x itself, not re-based at the warm-up's end).

Recipe. `LdduConfig`'s defaults are the release's model and train.sh loss weights; the
`lddu-authors` preset is the whole train.sh recipe (BertAdam lr 2e-4, warmup_cosine 10%, batch
64, 30 epochs, seed 42, weight decay 0.01 with the input LayerNorm gains decayed, threshold 0.21).
`configs/models/lddu.yaml` (mmerkit's recipe) keeps the release's optimisation and departs in
one value, chosen on the validation split of the embedded data: `cdl_weight` 0.1 instead of 1.0.
At 1.0 the contrastive term (about 6 at the start, against BCEs of about 0.6) dominates the
gradients and `lddu-small` stays near the constant prediction (seed 1: valid micro-F1 0.43 /
0.48 / 0.48 over epochs 1-3, loss 7.7 -> 7.5); at 0.1 (with lddu-small's lr 1e-3) it learns
(valid 0.68 at epoch 6, 0.73 at epoch 10). The same was found for CARAT (its cl_weight 0.1).
`lddu-small` is the CPU width (hidden 64, latent 32, queue 2048, lr 1e-3) for the comparison.

Release defects fixed (B6), and how:
- Model selection and early stopping on the test set: the engine selects the epoch on the
  validation split and evaluates the test split once (no early stopping: every epoch is run).
- Six labels hard-coded (heads, id maps, `arange(6)`): every size comes from the store's labels.
- The queue is enqueued with its autograd history: here under no_grad, from detached rows,
  through the engine's `gather` (every rank holds the same queue).
- The per-sample running-average bookkeeping of the CRL term (dead code keyed by tensors, so it
  only grows memory) and the unused twin heads, pooler and `get_similar` are not built.
- The ring buffer writes with wrap-around at any size (the release raises a shape error when
  the pointer plus the batch's rows pass twice the queue length).
- The contrastive term never builds the release's N x N matrices (N = 18B + Q = 9,344 at batch
  64): losses.supcon_loss computes the same value and gradient from per-class sums and a chunked
  log-normaliser (tests/test_lddu.py checks both against the dense formula).

Departures from the release, and why:
- Parameters: at the release's sizes on MOSEI (768/35/74 inputs, six labels) this model has
  5,492,519 parameters: the release's 5,689,895 used ones less its three BERT poolers (197,376),
  whose output is never read (B2.2).
- Padding masks are honoured in the encoders and the label-wise attention (the release pads
  nothing: its masks are all ones, so its results are unchanged); a missing modality's rows are
  left out of the contrastive pool and queue.
- Position tables have at least the store's longest sequence (the release's 60 rows), so
  unaligned stores run (the release cannot select its unaligned path, B6.3).
- The release's concatenation order is (visual, audio, text); here it is the DataSpec order
  (a permutation of the same weights).
- Queue: `queue_init="authors"` (default) is the release's column-normalised randn rows with
  labels that match no class; "fixed" starts empty (rows ignored until written).
- Losses on probabilities run in float32 outside autocast (BCE on probabilities is not
  autocast-safe); the contrastive loss always runs in float32.
- No modality_label_scores: the mu and sigma heads read every modality at once.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmerkit.config import ModelConfig
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import Gather, MMERModel, ModelOutput, register_model
from mmerkit.models.layers import TransformerEncoder, input_norm, masked_softmax, xavier_matrices
from mmerkit.models.losses import IGNORE, ring_enqueue, supcon_loss


class LdduConfig(ModelConfig):
    """LDDU hyper-parameters; defaults are the release's model and train.sh's loss weights."""

    layers: dict[str, int] = Field(default_factory=lambda: {"text": 3, "visual": 3, "audio": 3})
    default_layers: int = 3  # for modalities not named in `layers`
    hidden_size: int = 256
    num_heads: int = 8
    intermediate_size: int = 256
    dropout: float = 0.3  # encoders: embedding, attention and hidden dropout
    max_positions: int = 60  # raised to the store's longest sequence when that is longer
    latent_size: int = 128  # k: each Gaussian's mu and sigma; also the heads' hidden width
    attn_dropout: float = 0.1  # label-wise attention, on A K
    head_dropout: float = 0.1  # common score and the mu / sigma heads
    threshold: float = 0.21
    # loss weights (train.sh: --final_loss 1 --cml 0.3 --cdl 1 --crl 0.3)
    final_weight: float = 1.0
    cml_weight: float = 0.3
    cdl_weight: float = 1.0
    crl_weight: float = 0.3
    # contrastive term and queue
    temperature: float = Field(0.07, gt=0)
    base_temperature: float = Field(0.07, gt=0)
    moco_queue: int = Field(8192, ge=1)
    queue_init: Literal["authors", "fixed"] = "authors"
    contrastive_chunk: int = Field(1024, ge=1)
    # the release names its input LayerNorms `*_norm2d`, so its name-based rule decays their gains
    decay_input_norms: bool = True


class LabelQueryAttention(nn.Module):
    """B2.4: learned label queries attend over one modality's steps; values are the keys.

    (B, T, d) -> (B, L, d). A sample with no valid step gets Z = W^o's bias.
    """

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.query, self.key, self.out = (nn.Linear(hidden, hidden) for _ in range(3))
        self.drop = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, labels: Tensor, h: Tensor, mask: Tensor | None) -> Tensor:
        q, k = self.query(labels), self.key(h)  # (L, d), (B, T, d)
        att = masked_softmax(torch.einsum("ld,btd->blt", q, k) * self.scale,
                             None if mask is None else mask[:, None, :])
        return self.out(self.drop(att @ k))


class GaussianEncoder(nn.Module):
    """B2.5: Z -> three ReLU layers (d -> (d+k)/2 -> k -> k) -> mu and log-variance; xavier."""

    def __init__(self, hidden: int, latent: int):
        super().__init__()
        mid = (hidden + latent) // 2
        self.body = nn.Sequential(nn.Linear(hidden, mid), nn.ReLU(), nn.Linear(mid, latent), nn.ReLU(),
                                  nn.Linear(latent, latent), nn.ReLU())
        self.mu, self.log_var = nn.Linear(latent, latent), nn.Linear(latent, latent)
        xavier_matrices(self)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        g = self.body(z)
        return self.mu(g), torch.exp(0.5 * self.log_var(g))


class PerLabelHead(nn.Module):
    """B2.7: one `Linear(i -> h), Dropout, ReLU, Linear(h -> 1), sigmoid` per label, run as one
    batched product: (B, L, i) -> (B, L). torch.nn.Linear's default initialisation per label."""

    def __init__(self, num_labels: int, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_labels, in_dim, hidden))
        self.b1 = nn.Parameter(torch.empty(num_labels, hidden))
        self.w2 = nn.Parameter(torch.empty(num_labels, hidden))
        self.b2 = nn.Parameter(torch.empty(num_labels))
        self.drop = nn.Dropout(dropout)
        for w, b, fan_in in ((self.w1, self.b1, in_dim), (self.w2, self.b2, hidden)):
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt 5) and the bias rule
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.drop(torch.einsum("bli,lih->blh", x, self.w1) + self.b1))
        return torch.sigmoid((h * self.w2).sum(-1) + self.b2)


def contrastive_ids(y: Tensor, num_mods: int) -> Tensor:
    """Class of each (sample, modality, label) row: l + L (2m + [y_l < 0.5]); (B, L) -> (B, M, L)."""
    L = y.shape[1]
    absent = (y < 0.5).long()[:, None, :]
    m = torch.arange(num_mods, device=y.device)[None, :, None]
    return torch.arange(L, device=y.device) + L * (2 * m + absent)


def contrastive_rows(mu: Tensor, sigma: Tensor) -> Tensor:
    """[mu/|mu| ; sigma/|sigma|] / sqrt(2) for (B, M, L, k) -> (B*M*L, 2k), unit rows, so that
    `supcon_loss`'s r_i . r_j / tau is the release's [.;.] . [.;.] / 2 / tau."""
    rows = torch.cat([F.normalize(mu, dim=-1), F.normalize(sigma, dim=-1)], -1) / math.sqrt(2.0)
    return rows.flatten(0, 2)


def calibration_loss(common: Tensor, sigma: Tensor) -> Tensor:
    """B3 "CRL": symmetric KL between u = softmax over all B x L of |sigma_{b,l}| and q = the
    per-sample softmax of the common score over labels (flattened, sums to B), / (B L).

    common (B, L); sigma (B, L, F) with the modalities concatenated on F."""
    log_u = torch.log_softmax(sigma.norm(dim=-1).flatten(), 0)
    log_q = torch.log_softmax(common, 1).flatten()
    q, u = log_q.exp(), log_u.exp()
    return 0.5 * ((q * (log_q - log_u)).sum() + (u * (log_u - log_q)).sum()) / common.numel()


def bce_on_probs(p: Tensor, y: Tensor) -> Tensor:
    """Mean BCE of probabilities (the release's nn.BCELoss), in float32 outside autocast."""
    with torch.autocast(p.device.type, enabled=False):
        return F.binary_cross_entropy(p.float(), y.float())


@register_model("lddu", paper="Latent Distribution Decoupling: A Probabilistic Framework for "
                "Uncertainty-Aware Multimodal Emotion Recognition (Huang et al., Findings of ACL 2025)",
                year=2025, config=LdduConfig)
class LDDU(MMERModel):
    """LDDU for any DataSpec with M >= 1 modalities and L >= 1 labels (module docstring)."""

    default_threshold = 0.21
    config: LdduConfig
    test_params: ClassVar[dict] = {
        "hidden_size": 32, "num_heads": 4, "intermediate_size": 32, "latent_size": 16,
        "layers": {"text": 1, "visual": 1, "audio": 1}, "moco_queue": 256, "dropout": 0.0}

    def __init__(self, config: LdduConfig, spec: DataSpec):
        super().__init__(config, spec)
        c = config
        self.mods = spec.modality_names
        M, L, d, k = len(self.mods), spec.num_labels, c.hidden_size, c.latent_size
        self.num_mods, self.num_labels = M, L
        self.norms = nn.ModuleDict({m: input_norm(spec.modalities[m]) for m in self.mods})
        self.encoders = nn.ModuleDict({
            m: TransformerEncoder(spec.modalities[m], d, c.layers.get(m, c.default_layers), c.num_heads,
                                  c.intermediate_size, c.dropout,
                                  max(c.max_positions, spec.max_len.get(m, 0)))
            for m in self.mods})
        self.label_table = nn.Parameter(torch.empty(L, d))
        nn.init.xavier_uniform_(self.label_table)
        self.label_attention = nn.ModuleDict({m: LabelQueryAttention(d, c.attn_dropout) for m in self.mods})
        self.gaussians = nn.ModuleDict({m: GaussianEncoder(d, k) for m in self.mods})
        self.common = nn.Sequential(nn.Linear(M * d, k), nn.Dropout(c.head_dropout), nn.ReLU(),
                                    nn.Linear(k, 1), nn.Sigmoid())
        self.mu_head = PerLabelHead(L, M * k, k, c.head_dropout)
        self.sigma_head = PerLabelHead(L, M * k, k, c.head_dropout)
        rows = 2 * k
        self.register_buffer("queue", torch.zeros(c.moco_queue, rows))
        self.register_buffer("queue_labels", torch.full((c.moco_queue,), IGNORE, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        if c.queue_init == "authors":
            # randn normalised over the queue axis (dim 0), stored at the rows' 1/sqrt(2) scale;
            # float labels that equal no class nor each other: distinct negative ids
            self.queue.copy_(F.normalize(torch.randn(c.moco_queue, rows), dim=0) / math.sqrt(2.0))
            self.queue_labels.copy_(-2 - torch.arange(c.moco_queue))

    def max_steps(self) -> dict[str, int | None]:
        """Each encoder's position table: at least 60 rows (the release's), or the store's longest."""
        return {m: enc.positions.num_embeddings for m, enc in self.encoders.items()}

    def forward(self, batch: Batch) -> ModelOutput:
        present = batch.present.to(batch.labels.device)
        zs, mus, sigmas = [], [], []
        for m in self.mods:
            mask = batch.masks[m]
            h = self.encoders[m](self.norms[m](batch.inputs[m].float()), mask)
            z = self.label_attention[m](self.label_table, h, mask)
            mu, sigma = self.gaussians[m](z)
            zs.append(z)
            mus.append(mu)
            sigmas.append(sigma)
        mu, sigma = torch.stack(mus, 1), torch.stack(sigmas, 1)  # (B, M, L, k)
        common = self.common(torch.cat(zs, -1)).squeeze(-1)  # (B, L)
        mu_cat, sigma_cat = torch.cat(mus, -1), torch.cat(sigmas, -1)  # (B, L, M k)
        r_mu, r_sigma = self.mu_head(mu_cat), self.sigma_head(sigma_cat)
        probs = fuse(r_mu, r_sigma, common)
        logits = torch.logit(probs.float().clamp(1e-6, 1 - 1e-6))
        aux = {"mu": mu, "sigma": sigma, "sigma_cat": sigma_cat, "common": common, "present": present}
        return ModelOutput(logits=logits, probs=probs, features={"mu": mu_cat, "sigma": sigma_cat}, aux=aux)

    def _pool(self, out: ModelOutput, y: Tensor) -> tuple[Tensor, Tensor]:
        """Contrastive rows (B*M*L, 2k) and their classes; rows of missing modalities IGNORE."""
        a = out.aux
        if "cdl_rows" not in a:
            ids = contrastive_ids(y, self.num_mods).masked_fill(~a["present"][:, :, None], IGNORE)
            a["cdl_rows"], a["cdl_ids"] = contrastive_rows(a["mu"], a["sigma"]), ids.reshape(-1)
        return a["cdl_rows"], a["cdl_ids"]

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        c, a, y = self.config, out.aux, batch.labels
        terms: dict[str, Tensor] = {}
        if c.final_weight:
            terms["final"] = c.final_weight * bce_on_probs(out.probs, y)
        if c.cml_weight:
            terms["cml"] = c.cml_weight * bce_on_probs(a["common"], y)
        if c.cdl_weight:
            rows, ids = self._pool(out, y)
            terms["cdl"] = c.cdl_weight * supcon_loss(
                rows, ids, self.queue, self.queue_labels, temperature=c.temperature,
                base_temperature=c.base_temperature, anchors="pool", chunk=c.contrastive_chunk)
        if c.crl_weight:
            with torch.autocast(y.device.type, enabled=False):
                terms["crl"] = c.crl_weight * calibration_loss(a["common"].float(), a["sigma_cat"].float())
        terms["total"] = sum(terms.values()) if terms else out.logits.sum() * 0.0
        return terms

    @torch.no_grad()
    def on_train_batch_end(self, out: ModelOutput, batch: Batch, gather: Gather) -> None:
        """Enqueue this step's rows (all ranks', in rank order), detached: B3's ring buffer."""
        if not self.config.cdl_weight:
            return
        rows, ids = self._pool(out, batch.labels)
        ring_enqueue(self.queue, self.queue_labels, self.queue_ptr, gather(rows.detach()), gather(ids))


def fuse(r_mu: Tensor, r_sigma: Tensor, common: Tensor) -> Tensor:
    """B2.8: y^ = r^mu c + r^sigma (1 - c)."""
    return r_mu * common + r_sigma * (1.0 - common)


__all__ = ["LDDU", "LdduConfig", "calibration_loss", "contrastive_ids", "contrastive_rows", "fuse"]
