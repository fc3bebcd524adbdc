"""Losses shared by the models: supervised contrastive loss with a queue, masked MSE.

`supcon_loss` is the SupCon loss of CARAT's reference code (Khosla et al. 2020 with a MoCo-style
queue), computed without any N x N mask. For an anchor i of class c in a pool F of N rows
(L2-normalised, temperature tau) the reference computes

    mean_{j in P(i)} [ l_ij - m_i - log( sum_{k != i} exp(l_ik - m_i) + 1e-12 ) ]

with l_ij = F_i . F_j / tau, m_i = max_j l_ij (detached) and P(i) = {j != i : y_j = y_i},
dividing by |P(i)| + 1e-12. Because sum_{j in P(i)} l_ij = F_i . (S_c - F_i) / tau, where S_c is
the sum of the pool rows of class c, the positive part needs only C class sums; only the
log-normaliser needs the anchor-by-pool product, which is computed in chunks of anchors by a
custom autograd function that recomputes each chunk in the backward pass, so peak memory is
O(chunk x N) instead of several N x N buffers.

Example:
    >>> f = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    >>> y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    >>> float(supcon_loss(f, y)) > 0
    True
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmerkit.models.layers import grad_reverse

IGNORE = -1  # pool label: the row is dropped from the pool (an empty queue slot, a missing view)
_EPS = 1e-12


_WORKSPACE: dict[tuple, Tensor] = {}


def _workspace(slot: int, rows: int, cols: int, like: Tensor) -> Tensor:
    """A reusable (rows, cols) scratch buffer. Freshly allocated chunk x N buffers are page-
    faulted on every use, which costs more than the matmul that fills them on CPU."""
    key = (slot, like.device, like.dtype)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < rows * cols:
        _WORKSPACE.pop(key, None)
        buf = _WORKSPACE[key] = torch.empty(rows * cols, device=like.device, dtype=like.dtype)
    return buf[: rows * cols].view(rows, cols)


class _LogNormaliser(torch.autograd.Function):
    """r_i = m_i + log(sum_{k != i} exp(l_ik - m_i) + eps), l = F F^T / tau, for anchors i < A.

    Chunked over anchors, in reused scratch buffers. Only the first `n_grad` rows of F (the
    batch; the rest is the detached queue) get a gradient, and n_grad <= A. With weights
    W_ik = g_i exp(l_ik - r_i) / tau (zero on the diagonal), dF_j = sum_k W_jk F_k +
    sum_{i < A} W_ij F_i, so the backward pass only needs the n_grad x N slab of l.
    """

    @staticmethod
    def forward(ctx, pool: Tensor, n_anchor: int, n_grad: int, inv_tau: float,  # type: ignore[override]
                chunk: int) -> Tensor:
        n = pool.shape[0]
        shift = float(pool.detach().pow(2).sum(1).max()) * inv_tau  # >= every logit
        if n_anchor == n and shift <= 30.0:
            out = _symmetric_lognorm(pool, inv_tau, chunk, shift)
        else:
            out = _rowwise_lognorm(pool, n_anchor, inv_tau, chunk)
        ctx.save_for_backward(pool, out)
        ctx.n_grad, ctx.inv_tau, ctx.chunk = n_grad, inv_tau, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        pool, r = ctx.saved_tensors
        n_grad, inv_tau, chunk = ctx.n_grad, ctx.inv_tau, ctx.chunk
        n, n_anchor = pool.shape[0], r.shape[0]
        g = grad_out * inv_tau
        grad = torch.zeros_like(pool)
        for a in range(0, n_grad, chunk):
            b = min(a + chunk, n_grad)
            x = torch.mm(pool[a:b], pool.T, out=_workspace(0, b - a, n, pool))
            x.mul_(inv_tau).diagonal(offset=a).fill_(float("-inf"))
            # column role: rows a..b as positives/negatives of every anchor i < A
            w2 = torch.sub(x[:, :n_anchor], r[None, :], out=_workspace(1, b - a, n_anchor, pool))
            w2.exp_().mul_(g[None, :])
            grad[a:b] = w2 @ pool[:n_anchor]
            # row role: rows a..b as anchors
            x.sub_(r[a:b, None]).exp_().mul_(g[a:b, None])
            grad[a:b] += x @ pool
        return grad, None, None, None, None


def _rowwise_lognorm(pool: Tensor, n_anchor: int, inv_tau: float, chunk: int) -> Tensor:
    """r_i with the reference's per-row max, anchors i < n_anchor, chunk rows at a time."""
    n = pool.shape[0]
    out = pool.new_empty(n_anchor)
    for a in range(0, n_anchor, chunk):
        b = min(a + chunk, n_anchor)
        logits = torch.mm(pool[a:b], pool.T, out=_workspace(0, b - a, n, pool))
        logits.mul_(inv_tau)
        m = logits.amax(dim=1)  # row max includes the self pair, as in the reference
        logits.diagonal(offset=a).fill_(float("-inf"))
        logits.sub_(m[:, None]).exp_()
        out[a:b] = m + torch.log(logits.sum(dim=1) + _EPS)
    return out


def _symmetric_lognorm(pool: Tensor, inv_tau: float, chunk: int, shift: float) -> Tensor:
    """r_i for every pool row as anchor, visiting only blocks on or above the diagonal (l is
    symmetric): half the matmuls and exps. A global shift (>= every logit, so no overflow, and
    <= 30 so exp(l - shift) >= e^-60 cannot underflow to 0 for float32) replaces the row max;
    the row max m_i is still tracked to keep the reference's eps term exact:
    r_i = log(sum_{k != i} e^{l_ik} + eps e^{m_i})."""
    n = pool.shape[0]
    sums = pool.new_zeros(n)
    row_max = pool.new_full((n,), float("-inf"))
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        for c0 in range(a, n, chunk):
            c1 = min(c0 + chunk, n)
            blk = torch.mm(pool[a:b], pool[c0:c1].T, out=_workspace(0, b - a, c1 - c0, pool))
            blk.mul_(inv_tau)
            torch.maximum(row_max[a:b], blk.amax(1), out=row_max[a:b])
            if c0 == a:
                blk.diagonal().fill_(float("-inf"))
            else:
                torch.maximum(row_max[c0:c1], blk.amax(0), out=row_max[c0:c1])
            blk.sub_(shift).exp_()
            sums[a:b] += blk.sum(1)
            if c0 != a:
                sums[c0:c1] += blk.sum(0)
    return shift + torch.log(sums + _EPS * torch.exp(row_max - shift))


def log_normaliser(pool: Tensor, n_anchor: int, n_grad: int, temperature: float,
                   chunk: int = 1024) -> Tensor:
    """Per-anchor log of the SupCon denominator (with the reference's detached max and 1e-12)."""
    return _LogNormaliser.apply(pool, n_anchor, n_grad, 1.0 / temperature, max(1, int(chunk)))


def supcon_loss(
    features: Tensor,
    labels: Tensor,
    queue: Tensor | None = None,
    queue_labels: Tensor | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    anchors: Literal["pool", "batch"] = "pool",
    chunk: int = 1024,
) -> Tensor:
    """Supervised contrastive loss over the pool [features; queue] (CARAT Eq. 6-7).

    features: (n, p) L2-normalised batch rows (receive gradients); labels: (n,) int64.
    queue / queue_labels: (Q, p) / (Q,) earlier rows, used detached.
    Labels >= 0 are classes; IGNORE (-1) drops the row from the pool (empty queue slot or a
    missing modality); any other negative label marks a row that is nobody's positive (used for
    the reference's random initial queue, whose float labels never match a class).

    anchors="pool" (reference code): every pool row, queue included, is an anchor and the loss is
    the mean over all N anchors, anchors without positives contributing 0.
    anchors="batch" (paper Eq. 7): only the batch rows are anchors and the loss is the mean over
    the batch anchors that have at least one positive in the pool (0 if there is none).
    Both are multiplied by -temperature / base_temperature. `chunk` anchors are processed at a
    time (peak memory about 2 x chunk x N floats).
    """
    with torch.autocast(features.device.type, enabled=False):  # exp of logits up to 1/tau: fp32
        if features.dtype in (torch.float16, torch.bfloat16):
            features = features.float()
        return _supcon(features, labels, queue, queue_labels, temperature,
                       base_temperature, anchors, chunk)


def _supcon(features, labels, queue, queue_labels, temperature, base_temperature, anchors, chunk):
    keep = labels != IGNORE
    if not bool(keep.all()):
        features, labels = features[keep], labels[keep]
    n_batch = features.shape[0]
    pool, pool_labels = features, labels
    if queue is not None and queue_labels is not None:
        qkeep = queue_labels != IGNORE
        pool = torch.cat([features, queue.detach()[qkeep].to(features.dtype)])
        pool_labels = torch.cat([labels, queue_labels[qkeep].to(labels.dtype)])
    n_anchor = pool.shape[0] if anchors == "pool" else n_batch
    if n_anchor == 0:
        return features.sum() * 0.0
    pool = pool.contiguous()
    inv_tau = 1.0 / temperature

    # positives: sum_{j in P(i)} l_ij = F_i . (S_c - F_i) / tau via per-class sums S_c
    cls = pool_labels.clamp(min=0)
    valid = (pool_labels >= 0).to(pool.dtype)
    n_cls = int(cls.max()) + 1
    sums = pool.new_zeros(n_cls, pool.shape[1]).index_add_(0, cls, pool * valid[:, None])
    counts = pool.new_zeros(n_cls).index_add_(0, cls, valid)
    fa = pool[:n_anchor]
    n_pos = ((counts[cls[:n_anchor]] - 1.0) * valid[:n_anchor]).clamp(min=0)
    # S_c - F_i cancels to ~1e-16 for a lone anchor; the mask keeps /1e-12 from amplifying it
    pos_sum = (fa * (sums[cls[:n_anchor]] - fa)).sum(1) * inv_tau * (n_pos > 0)

    lognorm = log_normaliser(pool, n_anchor, n_batch, temperature, chunk)
    mean_log_prob = (pos_sum - n_pos * lognorm) / (n_pos + _EPS)
    scale = -temperature / base_temperature
    if anchors == "pool":
        return scale * mean_log_prob.mean()
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return features.sum() * 0.0
    return scale * mean_log_prob[has_pos].mean()


@torch.no_grad()
def ring_enqueue(queue: Tensor, queue_labels: Tensor, ptr: Tensor, rows: Tensor, labels: Tensor) -> None:
    """FIFO write of `rows` / `labels` into the ring buffer `queue` / `queue_labels` at the
    pointer `ptr` (a 0-d long tensor), wrapping around; with more rows than slots the last Q win.
    Everything is updated in place and nothing keeps autograd history."""
    q, n = queue.shape[0], rows.shape[0]
    start = int(ptr)
    if n > q:
        rows, labels, start = rows[-q:], labels[-q:], (start + n - q) % q
    idx = (start + torch.arange(rows.shape[0], device=rows.device)) % q
    queue[idx] = rows.detach().to(queue.dtype)
    queue_labels[idx] = labels.to(queue_labels.dtype)
    ptr.fill_((int(ptr) + n) % q)


def masked_mse_sum(pred: Tensor, target: Tensor, present: Tensor | None) -> Tensor:
    """sum over modalities of MSE(pred_m, target_m) for (B, M, ...) tensors, skipping missing
    (sample, modality) pairs; equals the plain sum of per-modality MSEs when all are present."""
    sq = (pred - target).pow(2)
    if present is not None:
        sq = sq * present.view(*present.shape, *([1] * (sq.ndim - 2))).to(sq.dtype)
    return sq.sum() / (sq.numel() / sq.shape[1])


def diff_loss(a: Tensor, b: Tensor) -> Tensor:
    """Orthogonality: mean over the batch of ||A_b B_b^T||_F^2; a, b (B, ..., T, d) -> (...)."""
    return (a @ b.transpose(-1, -2)).pow(2).sum((-1, -2)).mean(0)


def orthogonality_loss(private: Tensor, common: Tensor) -> tuple[Tensor, Tensor]:
    """TAILOR's (sum_{m<n} diff(p_m, p_n), sum_m diff(c_m, p_m)) for (B, M, T, d) inputs."""
    M = private.shape[1]
    i, j = torch.triu_indices(M, M, offset=1, device=private.device)
    pairs = diff_loss(private[:, i], private[:, j]).sum() if M > 1 else private.sum() * 0.0
    return pairs, diff_loss(common, private).sum()


def modality_adversarial_loss(discriminator: torch.nn.Module, private: Tensor, common: Tensor,
                              masks: Tensor, grl_lambda: float = 1.0) -> tuple[Tensor, Tensor]:
    """TAILOR's discriminator CE summed over modalities, mean over valid steps: (private, common).

    private / common (B, M, T, d), masks (B, M, T) bool; `discriminator` maps d -> M logits per
    step. The common path goes through gradient reversal, so D learns to tell modalities apart
    while the common projector learns to hide them; the private path has no reversal (both want
    the modality to be visible). Invalid steps (padding, a missing modality) add nothing.
    """
    M = private.shape[1]
    target = torch.arange(M, device=masks.device)[None, :, None].expand_as(masks)
    w = masks.to(private.dtype)
    count = w.sum((0, 2)).clamp_min(1.0)  # valid steps per modality

    def ce(x: Tensor) -> Tensor:
        logits = discriminator(x)  # (B, M, T, M)
        nll = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none")
        return ((nll.view_as(w) * w).sum((0, 2)) / count).sum()

    return ce(private), ce(grad_reverse(common, grl_lambda))


def bce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets)


def supcon_loss_dense(feats: Tensor, labels: Tensor, queue: Tensor | None = None,
                      queue_labels: Tensor | None = None, *, temperature: float = 0.07,
                      base_temperature: float = 0.07, anchors: Literal["pool", "batch"] = "pool",
                      chunk: int = 0) -> Tensor:
    """`supcon_loss` computed as the authors' code does, with N x N float masks (spec §3.4).

    O(N^2) memory: the reference for tests and for `benchmarks/throughput.py --supcon dense`
    (the cost this module avoids), never used in training. `chunk` is ignored.
    """
    tau, base = temperature, base_temperature
    keep = labels != IGNORE
    feats, labels = feats[keep], labels[keep]
    n_batch = feats.shape[0]
    if queue is not None:
        qkeep = queue_labels != IGNORE
        pool = torch.cat([feats, queue.detach()[qkeep]])
        lab = torch.cat([labels, queue_labels[qkeep]])
    else:
        pool, lab = feats, labels
    n = pool.shape[0]
    logits = pool @ pool.T / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = (lab[:, None] == lab[None, :]).float()
    same = same * (lab[:, None] >= 0).float()  # negative labels are nobody's positive
    logits_mask = 1.0 - torch.eye(n, dtype=pool.dtype, device=pool.device)
    pos_mask = same * logits_mask
    exp = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp.sum(1, keepdim=True) + 1e-12)
    mean_log_prob_pos = (pos_mask * log_prob).sum(1) / (pos_mask.sum(1) + 1e-12)
    loss = -(tau / base) * mean_log_prob_pos
    if anchors == "pool":
        return loss.mean()
    loss, npos = loss[:n_batch], pos_mask.sum(1)[:n_batch]
    return loss[npos > 0].mean() if bool((npos > 0).any()) else feats.sum() * 0
