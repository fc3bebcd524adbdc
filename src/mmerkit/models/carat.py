"""CARAT: Contrastive Feature Reconstruction and Aggregation (Peng et al., AAAI 2024).

Implemented from specs/carat.md (the authors' code is the ground truth; section numbers below
refer to the spec). For every modality m (text, visual, audio by default; any M >= 1 works,
slots follow the DataSpec order):

    x_m  = LayerNorm(inputs_m)                                  §2.1 (not in the paper)
    h_m  = Transformer_m(x_m)             (B, T, d)             §2.2, post-LN BERT layers
    e_m  = LabelWiseAttention_m(h_m)      (B, L, d)             §2.3, Eq. 1
    z_m  = enc_m(e_m), r_m = dec_m(z_m)   (B, L, p), (B, L, d)  §2.4 (2-layer MLPs)
    s_m  = softmax_2(<z^_m, [pos_m, neg_m]>)                    §2.6, prototypes §2.5
    c_m  = s0 pos + s1 neg (train, Eq. 9) | argmax prototype (eval, Eq. 10); c~_m = dec_m(c_m)
    FRR_m = R_m([r_1 | .. | c~_m | .. | r_M])                   §2.7, Eq. 2-3 (first level)
    SRR_m = R_m([FRR_1 | .. | FRR_M])                           §2.7 (second level, shared R_m)
    clf   = max_m <X_m[l], W_m[l]>  for X in {e, FRR, SRR}      §2.8, Eq. 4-5
    agg   = MLP(SRR_m flattened over labels) -> (B, M, L)      §2.9, Eq. 12-13
    shuffle: sample- and modality-wise permutation per label   §2.10, Eq. 14
    probs = (mean_m sigmoid(agg) + sigmoid(clf_SRR)) / 2       §2.11, Eq. 16
    SupCon over 3M views x L labels, classes l + L(2m + [y=0])  §3, Eq. 6-7

Losses (§4, names = config weights): lsr_clf, aug_clf, clf (level e / FRR / SRR), cl, recon_mse,
aug_mse, beta_mse, total_aug_clf, shuffle_aug_clf, ctc; a term whose weight is 0 is not computed.

Recipe. `CaratConfig`'s defaults are the authors' train.sh values and the `carat-authors`
preset is their whole recipe (BertAdam, lr 5e-5, their random initial queue). The shipped
recipe, `configs/models/carat.yaml`, departs from it in four places, chosen on the validation
split of the embedded data (README, "Choosing CARAT's defaults"):
- `cl_weight`, `recon_mse_weight` and `aug_mse_weight` 0.1 instead of 1.0. At 1.0 the gradients
  of the contrastive loss (about 8) and of the two MSE terms swamp those of the classifiers
  (BCE about 0.5): CARAT then stays at the "predict happy" solution for the whole run at every
  lr tried (5e-5 to 1e-3); either term alone at 1.0 is enough to cause it, all three at 0.1
  learn (validation micro-F1 0.83 against 0.50).
- lr 5e-4 instead of 5e-5 (10% warm-up and linear decay, as theirs), chosen on validation
  together with the weights above, and AdamW (the engine's default) instead of BertAdam.
- `queue_init: fixed`: the queue starts empty instead of with random rows whose labels match
  no class (they only add negatives; see the first departure below).
Everything else (architecture, threshold 0.25, the other loss weights, pool anchors) is theirs.

Soft labels: one convention, `positive(y) = y > 0.5`, decides both which prototype (positive or
negative) a sample updates and the polarity of its contrastive class.

Departures from the authors' code, and why:
- Initialisation: as in their code, the aggregation MLP, the reconstruction nets R_m and the
  encoder/decoder MLPs have xavier-uniform weights (torch's default range is 2-2.4x narrower).
- Queue (§3.3, §9.5): `queue_init="fixed"` (default) starts empty (label -1 = ignored, not in
  the pool) instead of column-normalised randn rows with random float labels; "authors" keeps
  the original (its rows are pure negatives with no positives, as there). The enqueue runs under
  no_grad, which removes the autograd-history leak; it goes through `gather` so every rank holds
  the same queue (the reference is single-process).
- SupCon is computed without N x N masks and chunked (losses.py), same value and gradient.
  `anchors="pool"` is the code (every pool row is an anchor); "batch" is the paper's Eq. 7
  (batch rows only, mean over anchors with >= 1 positive).
- Prototype EMA (§2.5) is the same sequential per-sample update in closed form (vectorised);
  with DDP the samples of all ranks are applied in rank order. Samples whose modality is missing
  do not update that modality's prototypes, and their z rows are left out of the pool/queue
  (the reference has no missing modalities, so its results are unchanged).
- Missing modalities: padding masks are honoured in attention (the reference never pads), a
  missing modality gives e = 0, is left out of the level-1 max and of the MSE terms.
- Shuffle permutations use the torch RNG (the reference uses numpy's global RNG, and lacks the
  numpy import and needs .reshape for .view, §9.1-2); the sample permutation is indexed by the
  destination slot as in the code (§2.10).
- Position tables are at least the store's max length (the reference's text table has 60 rows).
- Unaligned data: the CTC-style aligner of §8.2 maps every other modality onto the first
  modality's (text's) length; `ctc_weight` > 0 adds a torch CTCLoss (the reference adds none).
  A sample without text keeps its audio / visual evidence: it is aligned onto its own length
  (capped at the text table; layers.aligned_lengths) instead of onto zero text steps, which
  masked every modality away and gave every clip without a transcript one constant answer.
- Speed and memory (same values): fused QKV matmul and scaled_dot_product_attention in the
  extractors; SupCon from per-class sums plus a chunked log-normaliser that reuses scratch
  buffers and, with pool anchors, visits only half of the symmetric pool-by-pool product; the
  backward pass needs only the batch-by-pool slab. The SupCon loss always runs in float32
  (its logits reach 1/tau), also under bf16 autocast.
- Weight decay skips every bias and normalisation gain (MMERModel.param_groups); the authors'
  name-based rule also decays the gains of the three input LayerNorms. Negligible at 0.01.
- Not here but elsewhere: the validation split is evaluated whole and unshuffled (engine, §9.4),
  precision/recall are not swapped (metrics, §9.3), BertAdam is an optimiser option (engine).
- Ablations (Table 3) are switches: use_mrm (max-over-modalities branch: no lsr/aug/clf terms,
  prediction = agg), use_agg (no agg/shuffle terms, prediction = max-pooled SRR classifier),
  use_latent=False (no encoder/decoder: z = e and r = e, prototypes, intrinsic vectors and the
  contrastive pool live in the d-dim space, recon_mse is skipped), first_level=False (FRR := e,
  the second level reconstructs from e), second_level=False (SRR := FRR), sample_shuffle /
  modality_shuffle (both off: no shuffle term). See ABLATIONS.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmerkit.config import ModelConfig, ablation_table
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import Gather, MMERModel, ModelOutput, register_model
from mmerkit.models.layers import (
    MLP,
    LabelWiseAttention,
    SoftAligner,
    TransformerEncoder,
    align_to_reference,
    input_norm,
    xavier_matrices,
)
from mmerkit.models.losses import IGNORE, bce, masked_mse_sum, ring_enqueue, supcon_loss


class CaratConfig(ModelConfig):
    """CARAT hyper-parameters; defaults are the authors' train.sh (CMU-MOSEI, aligned)."""

    layers: dict[str, int] = Field(default_factory=lambda: {"text": 6, "visual": 4, "audio": 4})
    default_layers: int = 4  # for modalities not named in `layers`
    hidden_size: int = 256
    num_heads: int = 8
    intermediate_size: int = 256
    dropout: float = 0.3
    max_positions: dict[str, int] = Field(default_factory=lambda: {"text": 60})
    default_max_positions: int = 500  # raised to the store's max_len when that is longer
    proj_size: int = 64
    proto_m: float = 0.99
    moco_queue: int = Field(8192, ge=1)
    temperature: float = 0.07
    base_temperature: float = 0.07
    threshold: float = 0.25
    # loss weights (train.sh); clf (the SRR-level classifier) is fixed at 1 in the reference
    lsr_clf_weight: float = 0.01
    aug_clf_weight: float = 0.1
    clf_weight: float = 1.0
    cl_weight: float = 1.0
    recon_mse_weight: float = 1.0
    aug_mse_weight: float = 1.0
    beta_mse_weight: float = 0.0
    total_aug_clf_weight: float = 1.0
    shuffle_aug_clf_weight: float = 0.1
    ctc_weight: float = 0.0
    # contrastive loss and queue
    anchors: Literal["pool", "batch"] = "pool"
    contrastive_chunk: int = Field(1024, ge=1)
    queue_init: Literal["fixed", "authors"] = "fixed"
    # unaligned data: "auto" = CTC-style aligner when the DataSpec says the store is unaligned
    aligner: Literal["auto", "none", "ctc"] = "auto"
    # ablations (paper Table 3)
    use_mrm: bool = True
    use_agg: bool = True
    use_latent: bool = True
    first_level: bool = True
    second_level: bool = True
    sample_shuffle: bool = True
    modality_shuffle: bool = True

    @model_validator(mode="after")
    def _check(self) -> CaratConfig:
        if not (self.use_mrm or self.use_agg):
            raise ValueError("use_mrm and use_agg cannot both be false: nothing would predict")
        return self


# Table 3 ablations: preset name -> model overrides; the one table is configs/ablations.yaml
ABLATIONS: dict[str, dict] = ablation_table("carat")


def positive(y: Tensor) -> Tensor:
    """The one label convention for prototypes and contrastive classes: a label is positive when
    its (possibly soft) target is above 0.5. Hard 0/1 labels give the authors' split (they test
    y == 1 for the prototypes and y == 0 for the contrastive polarity, which only differ for
    soft targets)."""
    return y > 0.5


def prototype_ema(protos: Tensor, z: Tensor, sel: Tensor, m: float) -> Tensor:
    """The reference's sequential EMA `p[j] <- m p[j] + (1-m) z[i, j]` over samples i in order
    (only where sel[i, j]), in closed form: p_new = m^k p + (1-m) sum_r m^(k-r) z_r.

    protos (..., L, p); z (B, ..., L, p); sel (B, ..., L) bool. Returns the new prototypes.
    """
    s = sel.to(z.dtype)
    after = s.flip(0).cumsum(0).flip(0) - s  # selected samples after sample i
    w = (1.0 - m) * s * torch.pow(m, after)
    total = s.sum(0)
    return torch.pow(m, total)[..., None] * protos + (w[..., None] * z).sum(0)


@register_model("carat", paper="CARAT: Contrastive Feature Reconstruction and Aggregation for "
                "Multi-Modal Multi-Label Emotion Recognition (Peng et al., AAAI 2024)",
                year=2024, config=CaratConfig)
class CARAT(MMERModel):
    """CARAT for any DataSpec with M >= 1 modalities (see the module docstring)."""

    default_threshold = 0.25
    config: CaratConfig
    test_params: ClassVar[dict] = {
        "hidden_size": 32, "num_heads": 4, "intermediate_size": 32, "proj_size": 8,
        "layers": {"text": 1, "visual": 1, "audio": 1}, "moco_queue": 256, "dropout": 0.0}
    # the loss weights decide whether CARAT learns at all on a new corpus (configs/models/carat.yaml)
    search_space: ClassVar[dict] = {
        "model.cl_weight": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "model.recon_mse_weight": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "model.aug_mse_weight": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "model.threshold": {"type": "float", "low": 0.15, "high": 0.5}}

    def __init__(self, config: CaratConfig, spec: DataSpec):
        super().__init__(config, spec)
        c = config
        self.mods = spec.modality_names
        M, L, d = len(self.mods), spec.num_labels, c.hidden_size
        self.num_mods, self.num_labels = M, L
        self.use_aligner = c.aligner == "ctc" or (c.aligner == "auto" and not spec.aligned)
        self.ref_len = self._max_pos(self.mods[0])
        self.norms = nn.ModuleDict({m: input_norm(spec.modalities[m]) for m in self.mods})
        self.extractors = nn.ModuleDict({
            m: TransformerEncoder(spec.modalities[m], d, c.layers.get(m, c.default_layers),
                                  c.num_heads, c.intermediate_size, c.dropout,
                                  self.ref_len if self.use_aligner else self._max_pos(m))
            for m in self.mods})
        self.aligners = nn.ModuleDict({m: SoftAligner(spec.modalities[m], self.ref_len)
                                       for m in self.mods[1:]} if self.use_aligner else {})
        self.lwa = nn.ModuleDict({m: LabelWiseAttention(d, L) for m in self.mods})
        latent = c.proj_size if c.use_latent else d
        self.latent_dim = latent
        if c.use_latent:
            self.enc = nn.ModuleList(MLP(d, d // 2, c.proj_size) for _ in self.mods)
            self.dec = nn.ModuleList(MLP(c.proj_size, d // 2, d) for _ in self.mods)
        # reconstruction net R_m (named by its target modality), one Linear(M*d -> d); xavier-
        # uniform weights as in the authors' code (torch's default range is 2-2.4x narrower)
        self.recon = nn.ModuleList(nn.Linear(M * d, d) for _ in self.mods)
        xavier_matrices(self.recon)
        self.classifier = nn.Parameter(torch.empty(M, L, d))
        nn.init.kaiming_uniform_(self.classifier.view(M * L, d), a=5 ** 0.5)
        if c.use_agg:
            self.agg = MLP(L * d, d, L)  # xavier-uniform weights, as the authors' MLLinear
        self.register_buffer("pos_protos", torch.zeros(M, L, latent))
        self.register_buffer("neg_protos", torch.zeros(M, L, latent))
        self.register_buffer("queue", torch.zeros(c.moco_queue, latent))
        self.register_buffer("queue_labels", torch.full((c.moco_queue,), IGNORE, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        if c.queue_init == "authors":
            self.queue.copy_(F.normalize(torch.randn(c.moco_queue, latent), dim=0))
            # random float labels never equal a class nor each other: distinct negative ids
            self.queue_labels.copy_(-2 - torch.arange(c.moco_queue))

    def max_steps(self) -> dict[str, int | None]:
        # unaligned: every modality is soft-aligned onto the text's steps, so only text is capped
        return {m: self._max_pos(m) if i == 0 or not self.use_aligner else None
                for i, m in enumerate(self.mods)}

    def _max_pos(self, m: str) -> int:
        c = self.config
        return max(c.max_positions.get(m, c.default_max_positions), self.spec.max_len.get(m, 0))

    # ------------------------------------------------------------------ forward

    def _encode(self, e: Tensor, m: int) -> Tensor:
        return self.enc[m](e) if self.config.use_latent else e

    def _decode(self, z: Tensor, m: int) -> Tensor:
        return self.dec[m](z) if self.config.use_latent else z

    def _extract(self, batch: Batch, aux: dict) -> Tensor:
        """Input norm, (aligner), transformer and label-wise attention: e (B, M, L, d)."""
        ref_mask = batch.masks[self.mods[0]]
        t_ref = batch.inputs[self.mods[0]].shape[1]
        es = []
        for m in self.mods:
            x, mask = self.norms[m](batch.inputs[m].float()), batch.masks[m]
            if m in self.aligners:
                x, aligned_mask, scores, _ = align_to_reference(self.aligners[m], x, mask, ref_mask)
                # the CTC targets are the text's steps: samples without text are left out (0 frames)
                aux.setdefault("ctc", []).append((scores, mask.sum(1) * ref_mask.any(1), t_ref))
                mask = aligned_mask
            es.append(self.lwa[m](self.extractors[m](x, mask), mask))
        return torch.stack(es, 1)

    def _prototype_weights(self, z: Tensor, present: Tensor) -> Tensor:
        """softmax over {pos, neg} of <z^, prototype>: (B, M, L, 2)."""
        zh = F.normalize(z, dim=-1)
        sims = torch.stack([(zh * self.pos_protos).sum(-1), (zh * self.neg_protos).sum(-1)], -1)
        return sims.softmax(-1)

    def _intrinsic(self, z: Tensor, present: Tensor) -> Tensor:
        """Soft (train, Eq. 9) or hard (eval, Eq. 10) prototype mixture: (B, M, L, p)."""
        w = self._prototype_weights(z, present)
        pos, neg = self.pos_protos, self.neg_protos
        if self.training:
            return w[..., :1] * pos + w[..., 1:] * neg
        return torch.where((w[..., 0] > w[..., 1])[..., None], pos, neg)

    def _first_level_slots(self, r: Tensor, intrinsic: Tensor, present: Tensor) -> Tensor:
        """What fills the other modalities' slots of the first-level reconstruction: r itself
        (CARAT); RAMer puts the prototype padding where a modality is missing."""
        return r

    def _reconstruct(self, slots: Tensor, own: Tensor | None) -> Tensor:
        """R_m over slot order: slots (B, M, L, d); own (B, M, L, d) fills target m's own slot
        (first level) or None (second level, same input for every target). -> (B, M, L, d)."""
        b, M, L, d = slots.shape
        outs = []
        for m in range(M):
            x = slots if own is None else torch.cat([slots[:, :m], own[:, m:m + 1],
                                                      slots[:, m + 1:]], 1)
            outs.append(self.recon[m](x.permute(0, 2, 1, 3).reshape(b, L, M * d)))
        return torch.stack(outs, 1)

    def _clf(self, x: Tensor) -> Tensor:
        """Per-modality label logits <X_m[l], W_m[l]>: (B, M, L, d) -> (B, M, L)."""
        return (x * self.classifier).sum(-1)

    def _agg(self, s: Tensor) -> Tensor:
        return self.agg(s.flatten(2))  # (B, M, L*d) -> (B, M, L)

    def forward(self, batch: Batch) -> ModelOutput:
        c, aux = self.config, {}
        present = batch.present.to(batch.labels.device)
        e = self._extract(batch, aux)
        z = torch.stack([self._encode(e[:, m], m) for m in range(self.num_mods)], 1)
        r = torch.stack([self._decode(z[:, m], m) for m in range(self.num_mods)], 1)
        frr = e
        if c.first_level:
            ci = self._intrinsic(z, present)
            ct = torch.stack([self._decode(ci[:, m], m) for m in range(self.num_mods)], 1)
            frr = self._reconstruct(self._first_level_slots(r, ct, present), ct)
        srr = self._reconstruct(frr, None) if c.second_level else frr
        clf_srr = self._clf(srr)
        parts = []
        if c.use_agg:
            aux["agg"] = self._agg(srr)
            parts.append(torch.sigmoid(aux["agg"]).mean(1))
        if c.use_mrm:
            parts.append(torch.sigmoid(clf_srr.max(1).values))
        probs = sum(parts) / len(parts)
        aux.update(e=e, z=z, r=r, frr=frr, srr=srr, clf_srr=clf_srr, present=present)
        if self.training and c.cl_weight > 0:
            aux["cl_rows"] = self._pool_rows(z, frr, srr)
        logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
        return ModelOutput(logits=logits, probs=probs, features={"z": z},
                           modality_label_scores=clf_srr, aux=aux)

    def _views(self) -> int:
        return 1 + int(self.config.first_level) + int(self.config.second_level)

    def _pool_rows(self, z: Tensor, frr: Tensor, srr: Tensor) -> Tensor:
        """L2-normalised contrastive rows (B*V*M*L, p): sample-major, then view, then label."""
        c, M = self.config, self.num_mods
        views = [z]
        for lvl, on in ((frr, c.first_level), (srr, c.second_level)):
            if on:
                views.append(torch.stack([self._encode(lvl[:, m], m) for m in range(M)], 1))
        rows = torch.cat(views, 1)  # (B, V*M, L, p)
        return F.normalize(rows.flatten(0, 2), dim=-1)

    def _pool_labels(self, y: Tensor, present: Tensor) -> Tensor:
        """Classes l + L (2m + [not positive(y)]), tiled over views; z rows of missing modalities
        IGNORE. `positive` is the prototypes' convention too."""
        _B, L, M = y.shape[0], self.num_labels, self.num_mods
        negative = (~positive(y))[:, None, :].long()
        lab = torch.arange(L, device=y.device) + L * (2 * torch.arange(M, device=y.device)[:, None]
                                                      + negative)  # (B, M, L)
        first = lab.masked_fill(~present[:, :, None], IGNORE)
        return torch.cat([first] + [lab] * (self._views() - 1), 1).reshape(-1)

    # ------------------------------------------------------------------ loss

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """Weighted terms in the authors' order; a term whose weight is 0 or whose part of the
        model an ablation switch turns off is not computed."""
        c, a, y = self.config, out.aux, batch.labels
        present = a["present"]
        shuffles = (c.sample_shuffle or c.modality_shuffle) and self.training
        # name: (weight, switched on, term); each weight sits next to the term it weighs
        table = {
            "lsr_clf": (c.lsr_clf_weight, c.use_mrm, lambda: self._lsr_clf_term(a, y, present)),
            "aug_clf": (c.aug_clf_weight, c.use_mrm and c.first_level, lambda: bce(self._clf(a["frr"]).max(1).values, y)),
            "clf": (c.clf_weight, c.use_mrm, lambda: bce(a["clf_srr"].max(1).values, y)),
            "cl": (c.cl_weight, True, lambda: self._cl_term(a, y, present)),
            "recon_mse": (c.recon_mse_weight, c.use_latent, lambda: masked_mse_sum(a["r"], a["e"], present)),
            "aug_mse": (c.aug_mse_weight, c.first_level, lambda: masked_mse_sum(a["frr"], a["e"], present)),
            "beta_mse": (c.beta_mse_weight, c.second_level, lambda: masked_mse_sum(a["srr"], a["e"], present)),
            "total_aug_clf": (c.total_aug_clf_weight, c.use_agg,
                              lambda: bce(a["agg"], y[:, None, :].expand_as(a["agg"]))),
            "shuffle_aug_clf": (c.shuffle_aug_clf_weight, c.use_agg and shuffles, lambda: self._shuffle_term(a, y)),
            "ctc": (c.ctc_weight, "ctc" in a, lambda: sum(SoftAligner.ctc_loss(s, n, t) for s, n, t in a["ctc"])),
        }
        terms: dict[str, Tensor] = {name: weight * term() for name, (weight, on, term) in table.items()
                                    if on and weight != 0}
        terms["total"] = sum(terms.values()) if terms else out.logits.sum() * 0.0
        return terms

    def _lsr_clf_term(self, a: dict, y: Tensor, present: Tensor) -> Tensor:
        lv1 = self._clf(a["e"]).masked_fill(~present[:, :, None], -1e4)
        return bce(lv1.max(1).values, y)

    def _shuffle_term(self, a: dict, y: Tensor) -> Tensor:
        s, ys = self.shuffle(a["srr"], y)
        return bce(self._agg(s), ys)

    def _cl_term(self, a: dict, y: Tensor, present: Tensor) -> Tensor:
        rows = a.get("cl_rows")
        if rows is None:
            rows = self._pool_rows(a["z"], a["frr"], a["srr"])
        labels = self._pool_labels(y, present)
        a["cl_labels"] = labels
        return supcon_loss(rows, labels, self.queue, self.queue_labels,
                           temperature=self.config.temperature,
                           base_temperature=self.config.base_temperature,
                           anchors=self.config.anchors, chunk=self.config.contrastive_chunk)

    def shuffle(self, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Sample-wise + modality-wise shuffle (§2.10): S'[b,m,l] = S[pi_lm(b), sigma_lb(m), l].

        s (B, M, L, d), y (B, L) -> (B, M, L, d), (B, M, L). Permutations come from the torch RNG.
        """
        B, M, L, _ = s.shape
        dev = s.device
        if self.config.sample_shuffle:
            sample = torch.rand(L, M, B, device=dev).argsort(-1).permute(2, 1, 0)  # (B, M, L)
        else:
            sample = torch.arange(B, device=dev)[:, None, None].expand(B, M, L)
        if self.config.modality_shuffle:
            mod = torch.rand(L, B, M, device=dev).argsort(-1).permute(1, 2, 0)  # (B, M, L)
        else:
            mod = torch.arange(M, device=dev)[None, :, None].expand(B, M, L)
        lab = torch.arange(L, device=dev)[None, None, :].expand(B, M, L)
        return s[sample, mod, lab], y[sample, lab]

    # ------------------------------------------------------------------ state updates

    @torch.no_grad()
    def on_train_batch_end(self, out: ModelOutput, batch: Batch, gather: Gather) -> None:
        """Prototype EMA (§2.5) and FIFO enqueue (§3.3), over all ranks' samples in rank order."""
        a = out.aux
        y = positive(gather(batch.labels.detach()))
        present = gather(a["present"].to(torch.uint8)).bool()
        zh = F.normalize(gather(a["z"].detach().float()), dim=-1)  # (B', M, L, p)
        pos_sel = y[:, None, :] & present[:, :, None]
        neg_sel = ~y[:, None, :] & present[:, :, None]
        self.pos_protos.copy_(prototype_ema(self.pos_protos, zh, pos_sel, self.config.proto_m))
        self.neg_protos.copy_(prototype_ema(self.neg_protos, zh, neg_sel, self.config.proto_m))
        if self.config.cl_weight > 0:
            rows = a.get("cl_rows")
            if rows is None:
                rows = self._pool_rows(a["z"], a["frr"], a["srr"])
            labels = a.get("cl_labels")
            if labels is None:
                labels = self._pool_labels(batch.labels, a["present"])
            self.enqueue(gather(rows.detach()), gather(labels))

    @torch.no_grad()
    def enqueue(self, rows: Tensor, labels: Tensor) -> None:
        """Write rows at the pointer with wrap-around (if more than Q rows, the last Q win)."""
        ring_enqueue(self.queue, self.queue_labels, self.queue_ptr, rows, labels)
