"""Building blocks shared by the models: transformer extractor, label-wise attention, MLPs,
a CTC-style soft aligner and gradient reversal.

Every block takes boolean padding masks of shape (B, T) with True = valid step. A sample whose
modality is missing has an all-False mask; every block returns finite values for it (the
attention falls back to attending everywhere, exactly what BERT's additive -10000 mask does,
and the label-wise attention returns zeros).

Example:
    >>> enc = TransformerEncoder(in_dim=12, hidden=32, layers=1, heads=4, intermediate=32)
    >>> x, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    >>> enc(x, mask).shape
    torch.Size([2, 5, 32])
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-12  # BERT / TF-style LayerNorm epsilon


def input_norm(dim: int) -> nn.LayerNorm:
    """Per-time-step LayerNorm over the raw feature axis (learnable gain and bias)."""
    return nn.LayerNorm(dim, eps=LN_EPS)


def bert_init(module: nn.Module, std: float = 0.02) -> None:
    """BERT init: Linear/Embedding weights N(0, std), biases 0, LayerNorm gain 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def xavier_matrices(*modules: nn.Module) -> None:
    """Xavier-uniform init of every parameter with more than one dimension (the weight matrices
    and embedding tables) in `modules`; biases and LayerNorms keep their values."""
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


def attention_mask(mask: Tensor | None) -> Tensor | None:
    """(B, T) bool -> (B, 1, 1, T) bool for SDPA, or None when nothing is padded (fast path).

    Rows with no valid key attend to every key: that is what BERT's additive mask does, and it
    keeps the softmax finite for a missing modality.
    """
    if mask is None or bool(mask.all()):
        return None
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate Q/K/V projections (BERT parameter layout)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        b, t, d = x.shape
        # one fused matmul for Q, K and V (the parameters stay separate, as in BERT)
        w = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = F.linear(x, w, bias).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float):
        super().__init__()
        self.attn = SelfAttention(hidden, heads, dropout)
        self.attn_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, attn_mask)))
        return self.ffn_norm(x + self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))))


class TransformerEncoder(nn.Module):
    """BERT-style extractor for one modality's feature sequence.

    Linear(in_dim -> hidden) + learned absolute positions -> LayerNorm -> dropout, then `layers`
    post-LN layers. No CLS token, no pooler. Returns (B, T, hidden).
    """

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 4, heads: int = 8,
                 intermediate: int = 256, dropout: float = 0.3, max_positions: int = 512):
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.positions = nn.Embedding(max_positions, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, intermediate, dropout)
                                    for _ in range(layers))
        bert_init(self)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        t = x.shape[1]
        if t > self.positions.num_embeddings:
            raise ValueError(f"sequence of {t} steps exceeds max_positions="
                             f"{self.positions.num_embeddings}; raise it in the model config")
        h = self.drop(self.embed_norm(self.embed(x) + self.positions.weight[:t]))
        attn_mask = attention_mask(mask)
        for layer in self.layers:
            h = layer(h, attn_mask)
        return h


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over `dim` ignoring positions where mask is False; all-masked rows give zeros."""
    if mask is None:
        return scores.softmax(dim)
    neg = torch.finfo(scores.dtype).min
    return scores.masked_fill(~mask, neg).softmax(dim) * mask


class LabelWiseAttention(nn.Module):
    """Label-specific pooling (CARAT Eq. 1): e[b, l] = sum_t softmax_t(<w_l, h[b, t]>) h[b, t].

    (B, T, d) -> (B, L, d). A sample with no valid step gets e = 0.
    """

    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.score = nn.Linear(hidden, num_labels, bias=False)
        nn.init.xavier_uniform_(self.score.weight)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        scores = self.score(h).transpose(1, 2)  # (B, L, T)
        att = masked_softmax(scores, None if mask is None else mask[:, None, :])
        return att @ h


class MLP(nn.Module):
    """Linear -> ReLU -> Linear on the last axis; xavier-uniform weights, default biases."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)
        xavier_matrices(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class SoftAligner(nn.Module):
    """CTC-style soft alignment of a sequence onto `out_len` target positions (MulT's CTCModule).

    A 2-layer LSTM maps each input frame to out_len + 1 scores (channel 0 = blank); a softmax over
    them, with the blank dropped, says how much each frame belongs to each target position, and
    the output is the weighted sum of frames: (B, T_in, D) -> (B, T_out, D), T_out <= out_len.
    Padded input frames get weight 0. `ctc_loss` optionally trains the alignment with
    torch.nn.CTCLoss against targets 1..T_out (the monotone alignment).
    """

    def __init__(self, in_dim: int, out_len: int):
        super().__init__()
        self.out_len = out_len
        self.lstm = nn.LSTM(in_dim, out_len + 1, num_layers=2, batch_first=True)

    def forward(self, x: Tensor, mask: Tensor | None, t_out: int) -> tuple[Tensor, Tensor]:
        """Aligned sequence (B, t_out, D) and per-frame scores (B, T_in, out_len + 1)."""
        if t_out > self.out_len:
            raise ValueError(f"aligner target length {t_out} exceeds its out_len {self.out_len}")
        scores, _ = self.lstm(x)
        weights = scores.softmax(-1)[..., 1:t_out + 1]  # (B, T_in, t_out)
        if mask is not None:
            weights = weights * mask[..., None]
        return weights.transpose(1, 2) @ x, scores

    @staticmethod
    def ctc_loss(scores: Tensor, in_lengths: Tensor, t_out: int,
                 reduction: Literal["sum", "mean"] = "mean") -> Tensor:
        """CTCLoss(blank=0) of the frame scores against the target sequence 1..t_out.

        reduction "sum": the sum over samples of each one's negative log-likelihood (warp-ctc's
        default, which TAILOR's release uses); "mean": torch's default, each sample's value
        divided by its target length, then averaged over the samples.
        Samples with no valid frame are skipped; infeasible ones (fewer frames than targets) are
        zeroed by zero_infinity. Returns a scalar (0 when nothing is left).
        """
        keep = in_lengths > 0
        if not bool(keep.any()):
            return scores.sum() * 0.0
        logp = scores[keep].float().log_softmax(-1).transpose(0, 1)  # (T_in, B', C)
        n = int(keep.sum())
        targets = torch.arange(1, t_out + 1, device=scores.device).expand(n, t_out)
        tgt_len = torch.full((n,), t_out, dtype=torch.long, device=scores.device)
        return F.ctc_loss(logp, targets, in_lengths[keep].long(), tgt_len, blank=0,
                          reduction=reduction, zero_infinity=True)


def aligned_lengths(mask: Tensor, ref_mask: Tensor, cap: int) -> Tensor:
    """How many aligned steps each sample's soft-aligned sequence has: the reference's (text's)
    length where the reference is present; where it is absent, the sample's own valid length
    (at most `cap`, the aligner's out_len), so a clip without text keeps its audio / visual
    evidence instead of being masked away; 0 where the modality itself is absent. (B,) long.

    Each position's weights come from the aligner's softmax over all `out_len + 1` channels, so
    a sample's aligned steps do not depend on the other samples in its batch."""
    own, ref = mask.sum(1), ref_mask.sum(1)
    return torch.where(ref > 0, ref, own.clamp(max=cap)) * (own > 0)


def align_to_reference(aligner: SoftAligner, x: Tensor, mask: Tensor, ref_mask: Tensor,
                       t_out: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Soft-align (B, T_in, D) onto the reference's steps (see `aligned_lengths` for samples
    without a reference). Returns the aligned sequence (B, t_out, D), its mask (B, t_out), the
    aligner's frame scores and the per-sample target lengths. `t_out` defaults to the longest
    target length (at least the reference's padded length)."""
    lengths = aligned_lengths(mask, ref_mask, aligner.out_len)
    if t_out is None:
        t_out = max(ref_mask.shape[1], int(lengths.max()) if lengths.numel() else 0, 1)
    out, scores = aligner(x, mask, t_out)
    steps = torch.arange(t_out, device=x.device)
    return out, steps[None, :] < lengths[:, None], scores, lengths


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    """Identity forward, gradient multiplied by -lam backward (domain-adversarial training).

    >>> x = torch.ones(2, requires_grad=True); grad_reverse(x, 0.5).sum().backward(); x.grad
    tensor([-0.5000, -0.5000])
    """
    return _GradReverse.apply(x, lam)


class CommonPrivate(nn.Module):
    """TAILOR's adversarial refinement modules (peers §2.2), shared with RAMer: one private
    projector per modality, ONE common projector for all, and the shared modality discriminator
    D = Linear -> Dropout -> ReLU -> Linear(num_mods). The losses are
    `losses.modality_adversarial_loss(refine.discriminator, ...)` and `losses.orthogonality_loss`.
    """

    def __init__(self, hidden: int, num_mods: int, private_dropout: float, common_dropout: float,
                 disc_hidden: int, disc_dropout: float):
        super().__init__()
        self.private = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_mods))
        self.common = nn.Linear(hidden, hidden)
        self.private_drop, self.common_drop = nn.Dropout(private_dropout), nn.Dropout(common_dropout)
        self.discriminator = nn.Sequential(nn.Linear(hidden, disc_hidden), nn.Dropout(disc_dropout),
                                           nn.ReLU(), nn.Linear(disc_hidden, num_mods))

    def private_features(self, x: Tensor, valid: Tensor) -> Tensor:
        """p_m = tanh(Drop(W_p^m x_m)) for x (B, M, ..., d), zeroed where `valid` is 0."""
        return torch.stack([torch.tanh(self.private_drop(proj(x[:, m])))
                            for m, proj in enumerate(self.private)], 1) * valid

    def common_features(self, x: Tensor, valid: Tensor) -> Tensor:
        """c_m = tanh(Drop(W_c x_m)) for x (B, M, ..., d), zeroed where `valid` is 0."""
        return torch.tanh(self.common_drop(self.common(x))) * valid


__all__ = [
    "LN_EPS",
    "CommonPrivate",
    "MLP",
    "EncoderLayer",
    "LabelWiseAttention",
    "SelfAttention",
    "SoftAligner",
    "TransformerEncoder",
    "attention_mask",
    "bert_init",
    "grad_reverse",
    "input_norm",
    "masked_softmax",
    "xavier_matrices",
]
