"""AMP: adversarial masking and parameter perturbation for multi-modal multi-label emotion
recognition (Ge et al., WWW 2023).

Implemented from specs/peers.md §4 (the authors' code, ShipingGe/MMER, as the spec describes
it). For modalities m in DataSpec order:

    x_m  = Drop_0.1(LN(W_m inputs_m))                     (B, T_m, d), d = 512
    h_m  = UniEnc_m(x_m)                                  3 post-LN layers, 8 heads, FFN 1024, ReLU
    F    = TriEnc([h_1 ; .. ; h_M])                       3 layers over the concatenated sequences
    H    = Dec(Q, F)                                      1 layer, L learned emotion queries Q
    s    = w . H_l + b                                    logits (B, L); Linear(d -> 1) shared
  adversarial temporal masking (training):
    a_m  = sigmoid(v_m . h_m)                              per-step scores, then GRL(lambda = 0.1)
    M_m  = T_m * Gamma_m[:, 1]                             Sinkhorn top-k (k = 24, eps = 0.1, 100 it.)
           Gamma_m = OT plan between the scores (mass 1/T each) and anchors {0, 1} with mass
           {(T-k)/T, k/T}, cost (a - anchor)^2: a soft indicator of the k highest-scoring steps
    s^   = the same network on (1 - M_m) * x_m             masked prediction
  adversarial parameter perturbation (APP, FGM-style, training):
    g    = d(ASL(s) + mask_weight ASL(s^)) / d theta_tri  per tensor of the tri-modal encoder
    s~   = the network with theta_tri + eps g / ||g||      (eps = 1)
Loss: asl = ASL(s, y); masked = mask_weight ASL(s^, y) (0.1); app = app_weight KL (1.0) with
ASL(gamma- = 2, gamma+ = 1, clip 0.05) and KL = kl_div(log_softmax_L(s~), softmax_L(s).detach()).

Departures from the authors' code, and why:
- APP inside `loss()`: the authors backpropagate, shift the parameters in place, run forward and
  backward again, then restore. Here the gradient g comes from `torch.autograd.grad` and the
  perturbed tri-modal encoder runs through `torch.func.functional_call` on theta + eps g/||g||
  (g detached), so the KL gradient lands on theta exactly as after an in-place shift and
  restore, and the model keeps the one-forward one-backward contract of the engine. The
  perturbed pass reuses the clean unimodal features (only the tri-modal encoder is perturbed,
  so they are the same up to dropout noise).
- ASL is summed over labels and averaged over the batch (the ASL reference sums over both; the
  spec does not say which AMP uses): the scale then does not depend on the batch size.
- The KL direction follows the usual torch call written in the spec (kl_div of the noisy
  log-softmax against the detached clean softmax), i.e. KL(P_clean || P_noisy) in math notation.
- Padding and missing modalities: masks are honoured in every attention; the Sinkhorn marginals
  put mass only on valid steps, k is min(k, valid steps), and a missing modality gets mask 0.
- The spec lists no position or modality-type embeddings, so none are added.
- No modality_label_scores: the decoder's cross-attention weights are not exposed by torch's
  decoder layer.
- Not here but elsewhere: AdamW, cosine schedule and model selection by validation Jaccard
  accuracy are run-level settings (configs/models/amp.yaml, engine).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mmerkit.config import ModelConfig
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import MMERModel, ModelOutput, register_model
from mmerkit.models.layers import grad_reverse


class AMPConfig(ModelConfig):
    """AMP hyper-parameters; defaults are the authors' (spec §4)."""

    d_model: int = 512
    heads: int = 8
    ffn: int = 1024
    uni_layers: int = 3
    tri_layers: int = 3
    dec_layers: int = 1
    dropout: float = 0.1
    # adversarial temporal masking
    mask_k: int = 24
    sinkhorn_eps: float = 0.1
    sinkhorn_iters: int = 100
    grl_lambda: float = 0.1
    mask_weight: float = 0.1
    # adversarial parameter perturbation
    app_eps: float = 1.0
    app_weight: float = 1.0
    # asymmetric loss
    gamma_neg: float = 2.0
    gamma_pos: float = 1.0
    clip: float = 0.05
    threshold: float = 0.5


def sinkhorn_topk(scores: Tensor, mask: Tensor, k: int, eps: float, iters: int) -> Tensor:
    """Soft top-k indicator (Xie et al., 2020) in the log domain, batched.

    scores (B, T) in [0, 1]; mask (B, T) bool. Returns (B, T) in [0, 1], summing to min(k, n)
    over the n valid steps of each row (0 for a row with no valid step).
    """
    n = mask.sum(1, keepdim=True).to(scores.dtype)  # (B, 1)
    kk = torch.minimum(torch.full_like(n, float(k)), n)
    safe_n = n.clamp_min(1.0)
    neg = -1e9
    log_mu = torch.where(mask, -torch.log(safe_n), torch.full_like(scores, neg))  # (B, T)
    nu = torch.cat([(safe_n - kk) / safe_n, kk / safe_n], 1).clamp_min(1e-12)  # (B, 2)
    log_nu = torch.log(nu)
    anchors = torch.tensor([0.0, 1.0], device=scores.device, dtype=scores.dtype)
    log_k = -((scores[..., None] - anchors) ** 2) / eps  # (B, T, 2)
    log_u = torch.zeros_like(scores)
    log_v = torch.zeros_like(log_nu)
    for _ in range(iters):
        log_u = log_mu - torch.logsumexp(log_k + log_v[:, None, :], dim=2)
        log_v = log_nu - torch.logsumexp(log_k + log_u[:, :, None], dim=1)
    plan_top = torch.exp(log_u + log_k[..., 1] + log_v[:, 1:])  # (B, T)
    return (plan_top * n * mask).clamp(0.0, 1.0)


def asymmetric_loss(logits: Tensor, y: Tensor, gamma_neg: float, gamma_pos: float,
                    clip: float, eps: float = 1e-8) -> Tensor:
    """ASL (Ridnik et al., 2021): sum over labels, mean over the batch."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp_min(0.0) if clip > 0 else p  # probability shifting for negatives
    pos = y * (1 - p).pow(gamma_pos) * torch.log(p.clamp_min(eps))
    neg = (1 - y) * p_neg.pow(gamma_neg) * torch.log((1 - p_neg).clamp_min(eps))
    return -(pos + neg).sum(-1).mean()


def _padding(mask: Tensor) -> Tensor:
    """Key padding mask for torch attention (True = ignore); rows with no valid key see all."""
    return ~(mask | ~mask.any(1, keepdim=True))


@register_model("amp", paper="AMP: adversarial temporal masking and parameter perturbation for "
                "multi-modal multi-label emotion recognition (Ge et al., WWW 2023)", year=2023,
                config=AMPConfig)
class AMP(MMERModel):
    """AMP for any DataSpec with M >= 1 modalities (see the module docstring)."""

    config: AMPConfig
    test_params: ClassVar[dict] = {"d_model": 16, "heads": 2, "ffn": 32, "uni_layers": 1,
                                   "tri_layers": 1, "dropout": 0.0, "mask_k": 3,
                                   "sinkhorn_iters": 20}

    def __init__(self, config: AMPConfig, spec: DataSpec):
        super().__init__(config, spec)
        c, d = config, config.d_model
        self.mods = spec.modality_names

        def enc(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(d, c.heads, c.ffn, c.dropout, batch_first=True)
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, d), nn.LayerNorm(d),
                                                    nn.Dropout(c.dropout))
                                   for m, dim in spec.modalities.items()})
        self.uni = nn.ModuleDict({m: enc(c.uni_layers) for m in self.mods})
        self.tri = enc(c.tri_layers)
        dec = nn.TransformerDecoderLayer(d, c.heads, c.ffn, c.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec, c.dec_layers)
        self.queries = nn.Parameter(torch.randn(spec.num_labels, d) * 0.02)
        self.head = nn.Linear(d, 1)
        self.scorers = nn.ModuleDict({m: nn.Linear(d, 1) for m in self.mods})

    def _unimodal(self, xs: dict[str, Tensor], masks: dict[str, Tensor]) -> list[Tensor]:
        return [self.uni[m](xs[m], src_key_padding_mask=_padding(masks[m])) for m in self.mods]

    def _head(self, hs: list[Tensor], mask: Tensor, tri_params: dict | None = None) -> Tensor:
        x, pad = torch.cat(hs, 1), _padding(mask)
        if tri_params is None:
            f = self.tri(x, src_key_padding_mask=pad)
        else:
            f = functional_call(self.tri, tri_params, (x,), {"src_key_padding_mask": pad})
        q = self.queries.expand(x.shape[0], -1, -1)
        h = self.decoder(q, f, memory_key_padding_mask=pad)
        return self.head(h).squeeze(-1), h

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
            aux["masked_logits"], _ = self._head(self._unimodal(masked, masks), joint)
            aux["soft_masks"] = soft
        return ModelOutput(logits=logits, probs=torch.sigmoid(logits), features={"queries": h},
                           aux=aux)

    def _asl(self, logits: Tensor, y: Tensor) -> Tensor:
        c = self.config
        return asymmetric_loss(logits, y, c.gamma_neg, c.gamma_pos, c.clip)

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        c, y = self.config, batch.labels
        terms = {"asl": self._asl(out.logits, y)}
        if "masked_logits" in out.aux:
            terms["masked"] = c.mask_weight * self._asl(out.aux["masked_logits"], y)
        if self.training and c.app_weight and torch.is_grad_enabled():
            terms["app"] = c.app_weight * self._app(out, sum(terms.values()))
        terms["total"] = sum(terms.values())
        return terms

    def _app(self, out: ModelOutput, base: Tensor) -> Tensor:
        """KL between the prediction with the tri-modal encoder shifted along its normalised
        gradient and the (detached) clean prediction."""
        names, params = zip(*[(n, p) for n, p in self.tri.named_parameters() if p.requires_grad],
                            strict=True)
        grads = torch.autograd.grad(base, params, retain_graph=True, allow_unused=True)
        shifted = {}
        for n, p, g in zip(names, params, grads, strict=True):
            if g is None:
                shifted[n] = p
                continue
            norm = g.norm()
            step = torch.where(torch.isfinite(norm) & (norm > 0), self.config.app_eps / norm.clamp_min(1e-12),
                               torch.zeros_like(norm))
            shifted[n] = p + step * g.detach()
        noisy, _ = self._head(out.aux["hs"], out.aux["joint"], shifted)
        return F.kl_div(F.log_softmax(noisy, -1), F.softmax(out.logits, -1).detach(),
                        reduction="batchmean")
