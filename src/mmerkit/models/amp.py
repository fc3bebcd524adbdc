"""AMP: adversarial masking and parameter perturbation for multi-modal multi-label emotion
recognition (Ge et al., WWW 2023).

Implemented from specs/peers.md §4 and §4.1 (the release, ShipingGe/MMER, as the spec describes
its `train_mmer.py` and `utils/loss_functions.py`). For modalities m in DataSpec order:

    x_m  = Drop_0.1(LN(W_m inputs_m))                     (B, T_m, d), d = 512
    h_m  = LN(UniEnc_m(x_m))                              3 post-LN layers, 8 heads, FFN 1024, ReLU,
                                                          then a final LayerNorm (eps 1e-5)
    F    = LN(TriEnc([h_1 ; .. ; h_M]))                   3 layers over the concatenated sequences
    H    = LN(Dec(Q, F))                                  1 layer, L learned emotion queries Q
    s    = Drop_0.1(w . H_l + b),  p = sigmoid(s)         Linear(d -> 1) shared, dropout ON the logit
  every parameter with more than one dimension (queries included) is xavier-uniform initialised.
  adversarial temporal masking (training):
    a_m  = GRL_0.1(sigmoid(v_m . h_m))                    per-step scores
    M_m  = n_m * Gamma_m[:, 0]                            Sinkhorn top-k (k = 24, eps = 0.1, 100 it.)
           Gamma_m = OT plan between the steps (mass 1/n each) and the anchors {0, 1} with mass
           {k/n, (n-k)/n}, cost (a - anchor)^2 divided by its maximum: a soft indicator of the
           k LOWEST-scored steps (the release's TopK_custom)
    p^   = the same network on (1 - M_m) * x_m             masked prediction
  adversarial parameter perturbation (APP, FGM-style, training):
    g    = d(asl + masked) / d theta_tri                  per tensor of the tri-modal encoder
    p~   = the network with theta_tri + eps g / ||g||      (eps = 1; skipped where ||g|| is 0 or NaN)

Loss (the keys of `loss()`, each already weighted), all on PROBABILITIES as in the release:
    asl     ASL(p, y)                                      the release's optimised ASL, eps 1e-5:
            -mean over (sample, label) of [y (1-p)^g+ log p + (1-y) p_c^g- log(1-p_c)] x loss_scale
            with p_c = max(p - clip, 0), gamma- = 2, gamma+ = 1, clip 0.05, loss_scale 1000
    masked  mask_weight (0.1) * ASL(p^, y)
    app     app_weight (1.0) * kl_div(log_softmax_L(p~), softmax_L(p).detach()), torch's default
            reduction: the mean over all B x L elements (not `batchmean`)
The ASL's x1000 and the KL's elementwise mean set the relative size of the three terms: at
initialisation the KL term is about 1e-5 of the ASL, as in the release (measured at the
release's width and recipe on random MOSEI-shaped batches of 16, seeds 0 1 2: 1.17e-5, 9.3e-6,
1.02e-5; `python benchmarks/amp_kl_ratio.py`).

Recipe. `AMPConfig`'s defaults are the release's model; `configs/models/amp.yaml` holds
mmerkit's training recipe and the `amp-authors` preset the release's (AdamW 5e-5, weight decay
0.01, clip 1.0, batch 128, 10 epochs of warm-up, xavier-uniform initialisation, selection by
validation Jaccard accuracy). mmerkit's recipe changes two things:
- The optimisation: AdamW at lr 1e-3 with 10% warm-up then cosine decay, batch 64 (12 epochs
  of the embedded data are then ~400 steps; at the release's batch 128 and lr 5e-5 they are ~200
  steps of warm-up, too few to leave the label prior).
- The initialisation (`init: bert`): N(0, 0.02) for every Linear weight and the label queries
  instead of xavier-uniform for every matrix. With xavier the model fits its training split but
  learns nothing that transfers on the `mosei-like` profile (speaker offsets, heavy-tailed
  noise, a recurring distractor; `amp-small` seed 1: test micro-F1 0.422 against 0.494 for the
  best constant, validation AUC 0.41-0.73 per label while training AUC reached 0.79-0.95).
  Ablated there at 10 epochs, seed 1, by validation micro-F1 (the constant: 0.506): without the
  masking and APP terms 0.51 (so neither adversarial part is the cause); with BCE instead of
  the ASL 0.45; with a LayerNorm on the raw inputs 0.51; at lr 1e-3 0.51; with BERT's init 0.54
  at lr 5e-4 and 0.58-0.59 at lr 1e-3 (with or without the adversarial terms). No one matrix
  is the cause: at test size on `mosei-like` with its nuisance (tests/test_learns_every_profile.py,
  seeds 1 2 3, mean test micro-F1; the constant 0.515) xavier scores 0.541 at lr 5e-4 and 0.572 at
  1e-3, xavier with N(0, 0.02) queries 0.596, BERT's init with xavier queries 0.594, BERT's init
  0.625 (README, "Robustness").
Before 2026-12-06 the recipe kept xavier at lr 5e-4 (embedded test micro-F1 0.592 / 0.580 /
0.595 in seeds 1 2 3); `--set model.init=xavier --set optim.lr=5e-4` reproduces it.

Departures from the release, and why:
- APP inside `loss()`: the release backpropagates, shifts the parameters in place, runs forward
  and backward again, then restores. Here g comes from `torch.autograd.grad` and the perturbed
  tri-modal encoder runs through `torch.func.functional_call` on theta + eps g/||g|| (g
  detached), so the KL gradient lands on theta exactly as after an in-place shift and restore,
  and the model keeps the engine's one-forward one-backward contract. The perturbed pass reuses
  the clean unimodal features (only the tri-modal encoder is perturbed, so they are the same up
  to dropout noise).
- Sinkhorn: the release runs the iterations under no_grad and backpropagates through an implicit
  gradient; here autograd runs through the (log-domain, batched) iterations, which gives the same
  gradient once the iterations have converged. The cost's maximum is taken over the valid steps
  of the batch (the release has no padding).
- Padding and missing modalities: masks are honoured in every attention; the Sinkhorn marginals
  put mass only on valid steps, and a missing modality gets mask 0. k is at most the valid
  steps less one, so a modality is never masked whole: the release's sequences (MOSEI, 50
  steps) always exceed k = 24, but a store of utterance-level features has one step per
  modality, and masking every step of every modality fed the network all-zero inputs. With
  zero biases (`init: bert`) every post-LN LayerNorm then normalises an exact zero vector,
  whose gradient is 1 / sqrt(eps) ~ 316 each: ~1e23 at the first step on AVEC/IEMOCAP, an
  infinite gradient norm.
- The spec lists no position or modality-type embeddings, so none are added.
- No modality_label_scores: the decoder's cross-attention weights are not exposed by torch's
  decoder layer.
- Model selection keeps the engine's rule (the last epoch among equal best scores; the release
  keeps the first, strict `>`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mmerkit.config import ModelConfig
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import MMERModel, ModelOutput, register_model
from mmerkit.models.layers import bert_init, grad_reverse, xavier_matrices

LN_EPS_AMP = 1e-5  # the release passes layer_norm_eps = 1e-5 to every encoder and the decoder


class AMPConfig(ModelConfig):
    """AMP hyper-parameters; defaults are the release's (spec §4, §4.1)."""

    # names shared with the other models; the left-hand names are those of runs exported before
    renamed_fields: ClassVar[dict[str, str]] = {
        "d_model": "hidden_size", "heads": "num_heads", "ffn": "intermediate_size",
        "uni_layers": "layers", "tri_layers": "fusion_layers", "dec_layers": "decoder_layers"}

    hidden_size: int = 512
    num_heads: int = 8
    intermediate_size: int = 1024
    layers: int = 3  # of each modality's encoder
    fusion_layers: int = 3  # of the tri-modal encoder
    decoder_layers: int = 1
    dropout: float = 0.1
    head_dropout: float = 0.1  # on the label logit, after the Linear (the release's order)
    # adversarial temporal masking
    mask_k: int = 24
    sinkhorn_eps: float = 0.1
    sinkhorn_iters: int = 100
    grl_lambda: float = 0.1
    mask_weight: float = 0.1
    # adversarial parameter perturbation
    app_eps: float = 1.0
    app_weight: float = 1.0
    # asymmetric loss (the release's optimised ASL on probabilities)
    gamma_neg: float = 2.0
    gamma_pos: float = 1.0
    clip: float = 0.05
    asl_eps: float = 1e-5
    loss_scale: float = 1000.0  # the release multiplies the per-(sample, label) mean by 1000
    threshold: float = 0.5
    # "xavier": xavier-uniform for every matrix, the queries included (the release); "bert":
    # N(0, init_std) for every Linear weight and the queries, biases 0, the attention
    # in-projections at torch's default (mmerkit's recipe; module docstring, Recipe)
    init: Literal["xavier", "bert"] = "xavier"
    init_std: float = 0.02


def sinkhorn_topk(scores: Tensor, mask: Tensor, k: int, eps: float, iters: int) -> Tensor:
    """Soft indicator of the k LOWEST-scored valid steps (the release's TopK_custom), batched.

    scores (B, T) in [0, 1]; mask (B, T) bool. The cost (score - anchor)^2 against the anchors
    {0, 1} is divided by its (detached) maximum over the batch's valid steps; the target
    marginals are {k/n, (n-k)/n}; the result is n times the plan's mass on anchor 0. Returns
    (B, T) in [0, 1], summing to min(k, n - 1) over the n valid steps of each row (0 for a row with
    no valid step).
    """
    n = mask.sum(1, keepdim=True).to(scores.dtype)  # (B, 1)
    kk = torch.minimum(torch.full_like(n, float(k)), n - 1).clamp_min(0.0)  # never a whole modality
    safe_n = n.clamp_min(1.0)
    neg = -1e9
    log_mu = torch.where(mask, -torch.log(safe_n), torch.full_like(scores, neg))  # (B, T)
    nu = torch.cat([kk / safe_n, (safe_n - kk) / safe_n], 1).clamp_min(1e-12)  # (B, 2)
    log_nu = torch.log(nu)
    anchors = torch.tensor([0.0, 1.0], device=scores.device, dtype=scores.dtype)
    cost = (scores[..., None] - anchors) ** 2  # (B, T, 2)
    top = cost.detach().masked_fill(~mask[..., None], 0.0).amax().clamp_min(1e-12)
    log_k = -(cost / top) / eps
    log_u = torch.zeros_like(scores)
    log_v = torch.zeros_like(log_nu)
    for _ in range(iters):
        log_u = log_mu - torch.logsumexp(log_k + log_v[:, None, :], dim=2)
        log_v = log_nu - torch.logsumexp(log_k + log_u[:, :, None], dim=1)
    plan_low = torch.exp(log_u + log_k[..., 0] + log_v[:, :1])  # (B, T): mass on anchor 0
    return (plan_low * n * mask).clamp(0.0, 1.0)


def asymmetric_loss(probs: Tensor, y: Tensor, gamma_neg: float, gamma_pos: float, clip: float,
                    eps: float = 1e-5, scale: float = 1000.0) -> Tensor:
    """The release's optimised ASL (Ridnik et al., 2021) on probabilities: minus the mean over
    (sample, label) of the focused log-likelihoods, times `scale`.

    For y = 1: (1 - p)^gamma_pos log p; for y = 0: p_c^gamma_neg log(1 - p_c) with the shifted
    probability p_c = max(p - clip, 0); logs of values clamped at `eps`.
    """
    p_neg = (1 - probs + clip).clamp(max=1.0) if clip > 0 else 1 - probs  # = 1 - p_c
    log_lik = y * torch.log(probs.clamp(min=eps)) + (1 - y) * torch.log(p_neg.clamp(min=eps))
    focus = (1 - probs * y - p_neg * (1 - y)).pow(gamma_pos * y + gamma_neg * (1 - y))
    return -(log_lik * focus).mean() * scale


def consistency_kl(noisy_probs: Tensor, clean_probs: Tensor) -> Tensor:
    """The release's APP term: kl_div(log_softmax(noisy), softmax(clean).detach()) over the label
    axis of the probabilities, torch's default elementwise-mean reduction."""
    # torch's reduction="mean" (the release's default), written out: torch warns that "mean"
    # will come to mean "batchmean"
    kl = F.kl_div(F.log_softmax(noisy_probs, -1), F.softmax(clean_probs, -1).detach(), reduction="sum")
    return kl / noisy_probs.numel()


def _padding(mask: Tensor) -> Tensor:
    """Key padding mask for torch attention (True = ignore); rows with no valid key see all."""
    return ~(mask | ~mask.any(1, keepdim=True))


@register_model("amp", paper="AMP: adversarial temporal masking and parameter perturbation for "
                "multi-modal multi-label emotion recognition (Ge et al., WWW 2023)", year=2023,
                config=AMPConfig)
class AMP(MMERModel):
    """AMP for any DataSpec with M >= 1 modalities (see the module docstring)."""

    config: AMPConfig
    test_params: ClassVar[dict] = {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32,
                                   "layers": 1, "fusion_layers": 1, "dropout": 0.0,
                                   "head_dropout": 0.0, "mask_k": 3, "sinkhorn_iters": 20}
    search_space: ClassVar[dict] = {
        "model.mask_weight": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "model.app_weight": {"type": "float", "low": 0.1, "high": 2.0, "log": True}}

    def __init__(self, config: AMPConfig, spec: DataSpec):
        super().__init__(config, spec)
        c, d = config, config.hidden_size
        self.mods = spec.modality_names

        def enc(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(d, c.num_heads, c.intermediate_size, c.dropout,
                                               layer_norm_eps=LN_EPS_AMP, batch_first=True)
            return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d, eps=LN_EPS_AMP),
                                         enable_nested_tensor=False)

        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, d), nn.LayerNorm(d, eps=LN_EPS_AMP),
                                                    nn.Dropout(c.dropout))
                                   for m, dim in spec.modalities.items()})
        self.uni = nn.ModuleDict({m: enc(c.layers) for m in self.mods})
        self.tri = enc(c.fusion_layers)
        dec = nn.TransformerDecoderLayer(d, c.num_heads, c.intermediate_size, c.dropout,
                                         layer_norm_eps=LN_EPS_AMP, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec, c.decoder_layers, norm=nn.LayerNorm(d, eps=LN_EPS_AMP))
        self.queries = nn.Parameter(torch.empty(spec.num_labels, d))
        self.head = nn.Linear(d, 1)
        self.head_drop = nn.Dropout(c.head_dropout)
        self.scorers = nn.ModuleDict({m: nn.Linear(d, 1) for m in self.mods})
        if c.init == "xavier":
            xavier_matrices(self)  # the release: xavier-uniform for every matrix, after building
        else:
            bert_init(self, c.init_std)
            nn.init.normal_(self.queries, std=c.init_std)

    def _unimodal(self, xs: dict[str, Tensor], masks: dict[str, Tensor]) -> list[Tensor]:
        return [self.uni[m](xs[m], src_key_padding_mask=_padding(masks[m])) for m in self.mods]

    def _head(self, hs: list[Tensor], mask: Tensor, tri_params: dict | None = None) -> tuple[Tensor, Tensor]:
        """Label logits (B, L) (dropout already applied, as in the release) and the decoder states."""
        x, pad = torch.cat(hs, 1), _padding(mask)
        if tri_params is None:
            f = self.tri(x, src_key_padding_mask=pad)
        else:
            f = functional_call(self.tri, tri_params, (x,), {"src_key_padding_mask": pad})
        q = self.queries.expand(x.shape[0], -1, -1)
        h = self.decoder(q, f, memory_key_padding_mask=pad)
        return self.head_drop(self.head(h)).squeeze(-1), h

    def forward(self, batch: Batch) -> ModelOutput:
        c = self.config
        masks = {m: batch.masks[m] for m in self.mods}
        xs = {m: self.proj[m](batch.inputs[m].float()) for m in self.mods}
        hs = self._unimodal(xs, masks)
        joint = torch.cat([masks[m] for m in self.mods], 1)
        logits, h = self._head(hs, joint)
        aux: dict = {"hs": hs, "joint": joint}
        if self.training and c.mask_weight:
            soft = {}
            for m, hm in zip(self.mods, hs, strict=True):
                score = grad_reverse(torch.sigmoid(self.scorers[m](hm).squeeze(-1)), c.grl_lambda)
                soft[m] = sinkhorn_topk(score, masks[m], c.mask_k, c.sinkhorn_eps, c.sinkhorn_iters)
            masked = {m: (1 - soft[m][..., None]) * xs[m] for m in self.mods}
            masked_logits, _ = self._head(self._unimodal(masked, masks), joint)
            aux["masked_probs"] = torch.sigmoid(masked_logits)
            aux["soft_masks"] = soft
        return ModelOutput(logits=logits, probs=torch.sigmoid(logits), features={"queries": h},
                           aux=aux)

    def asl(self, probs: Tensor, y: Tensor) -> Tensor:
        """The configured asymmetric loss of probabilities `probs` against labels `y`."""
        c = self.config
        return asymmetric_loss(probs, y, c.gamma_neg, c.gamma_pos, c.clip, c.asl_eps, c.loss_scale)

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        c, y = self.config, batch.labels
        terms = {"asl": self.asl(out.probs, y)}
        if "masked_probs" in out.aux:
            terms["masked"] = c.mask_weight * self.asl(out.aux["masked_probs"], y)
        if self.training and c.app_weight and torch.is_grad_enabled():
            terms["app"] = c.app_weight * self._app(out, sum(terms.values()))
        terms["total"] = sum(terms.values())
        return terms

    def perturbed_tri_params(self, base: Tensor) -> dict[str, Tensor]:
        """The tri-modal encoder's parameters shifted by app_eps * g / ||g|| per tensor, g the
        gradient of `base`; tensors whose gradient is absent, 0 or not finite stay put."""
        names, params = zip(*[(n, p) for n, p in self.tri.named_parameters() if p.requires_grad],
                            strict=True)
        grads = torch.autograd.grad(base, params, retain_graph=True, allow_unused=True)
        shifted = {}
        for n, p, g in zip(names, params, grads, strict=True):
            if g is None:
                shifted[n] = p
                continue
            norm = g.norm()
            step = torch.where(torch.isfinite(norm) & (norm > 0),
                               self.config.app_eps / norm.clamp_min(1e-12), torch.zeros_like(norm))
            shifted[n] = p + torch.nan_to_num(step * g.detach())
        return shifted

    def _app(self, out: ModelOutput, base: Tensor) -> Tensor:
        """KL between the prediction with the tri-modal encoder shifted along its normalised
        gradient and the (detached) clean prediction, both as probabilities."""
        noisy, _ = self._head(out.aux["hs"], out.aux["joint"], self.perturbed_tri_params(base))
        return consistency_kl(torch.sigmoid(noisy), out.probs)
