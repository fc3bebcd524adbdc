"""TAILOR: Tailor Versatile Multi-modal Learning for Multi-label Emotion Recognition
(Zhang et al., AAAI 2022).

Implemented from specs/peers.md §2 (the authors' code, kniter1/TAILOR, as the spec describes it).
For modalities m in DataSpec order (text, visual, audio by default; any M >= 1 works):

    x_m   = LayerNorm(inputs_m)                          (unaligned: x_m = SoftAlign_m(x_m), §2.6)
    h_m   = Transformer_m(x_m)                           (B, T, d) unimodal extractor, §2.1
    p_m   = tanh(Drop_0.1(W_p^m h_m))                    private projector, one per modality
    c_m   = tanh(Drop_0.3(W_c h_m))                      common projector, shared by all modalities
    C     = sum_m c_m                                    (B, T, d)
    granularity descent (three encoders for t, v, a, none sharing weights):
      VA  = Cross_1([p_a ; p_v]),  VAT = Cross_2([p_t ; VA]),  Z = Cross_3([VAT ; C])
      each Cross = positions + token types (0 first part, 1 second) -> LN -> drop -> post-LN layers
    Q     = Drop(LN(E_label))                            (L, d) learned label table
    H     = DecoderLayer(Q, Z): LN(Q + SelfAttn) -> LN(. + CrossAttn(., Z)) -> LN(. + FFN)
    s     = sigmoid(Drop_0.1(w . H_l + b))               one Linear(d -> 1) shared by the labels
    y^    = 1[s > 0.35]

Losses (§2.2-2.3; the names are the keys of `loss()`, each already multiplied by its weight):
    bce          BCE(s, y)
    adv_private  adv_weight  * sum_m CE(D(p_m), m)        D shared, per time step, no reversal
    adv_common   adv_weight  * sum_m CE(D(GRL(c_m)), m)   gradient reversal (lambda = grl_lambda)
    diff_private diff_weight * sum_{m<n} diff(p_m, p_n)   diff(A, B) = mean_b ||A_b B_b^T||_F^2
    diff_common  diff_weight * sum_m diff(c_m, p_m)
    cml          cml_weight  * BCE(sigmoid(Drop_0.1(W C[:, 0])), y)   common-label loss
    ctc          ctc_weight  * sum_{m>0} CTC(align_m -> text)   unaligned data only; each CTC is
                 summed over the batch (warp-ctc's reduction in the release, §4.2)
with D = Linear(d -> d/2) -> Drop_0.1 -> ReLU -> Linear(d/2 -> M) and the authors' hard-coded
weights adv 0.01, diff 5e-6, cml 0.5, ctc 0.5 as config defaults.

Recipe. `TailorConfig`'s defaults are the authors' model; the `tailor-authors` preset is their
whole recipe (BERT init std 0.02 everywhere, BertAdam at 5e-5, 20 epochs, seed 42).
`configs/models/tailor.yaml`, mmerkit's recipe, departs in two places, both chosen on validation
at the CPU width (`tailor-small`, embedded data):
- `decoder_init: xavier`: the label side (label table, decoder layers, label head) is
  xavier-uniform initialised instead of N(0, 0.02); the extractors, projectors and fusion
  encoders keep BERT's 0.02.
- `optim.optimizer: adamw` instead of BertAdam (Adam without bias correction).
Why. The label decoder's queries are a learned table passed through a LayerNorm, so its residual
stream starts as the input-independent label embedding (norm sqrt(d)), while the cross-attention
output that carries the input scales with init_std^2 d, and its attention scores with
init_std^2 d too (a product of query, key and label table, all small). At the authors' 0.02 and
hidden 64 the label logits differ across samples by under 1% of their size at initialisation
(tests/test_tailor.py) and the attention over the 4T fused tokens is uniform, i.e. a mean pool.
The embedded data puts each label in a 2-4 step bump next to a decoy of the same mass smeared
over many steps, which a mean pool cannot separate (the pooled logistic regression scores
0.484), so the gradient the decoder passes back carries little more than the label prior and
training sits at a constant prediction until noise breaks the symmetry (some seeds never do).
Evidence (seed 2, the seed that stayed constant; valid micro-F1 per epoch):
- the same encoders with the decoder replaced by a max pool over the fused tokens and one
  Linear: 0.505, 0.54, 0.67, 0.74 after 4 epochs; so the encoders learn, the decoder blocks;
- a xavier-scaled decoder (std 0.15, rest 0.02) with AdamW: 0.51, 0.53, 0.67, 0.75, 0.79 ...
  0.81 at epoch 8 (test 0.806); with BertAdam at the same lr it stayed at 0.46-0.50 for 8
  epochs (seed 3 rose only to 0.65); raising the init of the whole model instead (std 0.1 or
  0.15, or 0.125 with AdamW) left every seed constant, as did lr 3e-4 to 3e-3, a batch of 16,
  no orthogonality term, BCE alone, or a max-pooled common-label loss.
Result (`python benchmarks/quality.py --only tailor`, tailor-small, 12 epochs, seeds 1 2 3):
test micro-F1 0.779 / 0.797 / 0.830 (0.802 +- 0.026; macro-F1 0.718 +- 0.059), valid 0.789 /
0.810 / 0.830, F1 above 0 on all six labels in every seed: no seed at a constant prediction.
The authors' recipe at this width (BertAdam 1e-3, init 0.02) had 1 of 3 seeds constant
(0.691 / 0.503 / 0.552). The full width (the packaged default: the authors' d = 256 with this
recipe at the authors' lr 5e-5) trains at about 6 samples/s on one CPU thread and was not
re-validated here; xavier scales with the width, so the decoder's start is the same there.

Departures from the authors' code, and why:
- Padding and missing modalities: the authors' masks are all ones (MOSEI has fixed length). Here
  padding masks are honoured in every attention; private and common features are zeroed at
  invalid steps, so a missing modality adds nothing to C and contributes no discriminator or
  orthogonality term; the discriminator's CE is a mean over valid steps only. With full masks
  the values are the authors'.
- A sample's answer must not depend on its batch. The fused sequence [first ; second] carries
  each part's padding in its middle, so the authors' position ids arange(n) would shift the
  second part's (and, down the descent, every inner part's) ids with the batch's padded
  lengths (tests/test_tailor.py). Each fusion encoder's position id
  is instead the count of valid steps before it (`valid_positions`: cumsum(mask) - 1); with full
  masks that is arange(n), the authors' ids. Likewise each sample's CTC targets are 1..its own
  text length, not 1..the batch's padded text length (the same under full masks).
- Aligned modalities whose batch lengths differ (the collate trims each to its own longest
  valid length) are zero padded to the longest; the common sum needs equal lengths.
- BCE is computed from logits (BCE-with-logits) instead of nn.BCELoss on probabilities: the same
  value, without log(0) when a probability saturates.
- Unaligned data: layers.SoftAligner (the authors' CTCModule, without warp-ctc) maps every other
  modality onto the first modality's (text's) length; the alignment loss is torch's CTCLoss
  (blank 0, targets 1..T_text, the sample's lengths) with reduction "sum", as warp-ctc's default in the
  release (peers §4.2): the SUM over the batch of each sample's negative log-likelihood, not
  divided by the batch size or the target length (torch's "mean" would make the term about
  B x T times smaller). It only exists when the aligner is used. A sample without text is
  aligned onto its own length (capped; layers.aligned_lengths) and left out of the CTC term, so
  its audio and visual inputs still count (aligning onto zero text steps masked them away).
  As in the release, the aligner has one channel per text position of the store plus the blank
  (`aligner_positions: text`: 51 for 50-step text; "positions" gives max(max_positions, text) +
  1 as mmerkit had, which lets longer texts through at inference). Named fix in mmerkit's
  recipe (configs/models/tailor.yaml), `ctc_input_lengths: frames`: the CTC input length of a
  sample is its own frame count; the release (the class default, "aligned") passes the
  post-alignment length (50) for every sample, so its CTC reads only the first 50 of ~500 frames.
- Weight decay: as the release's name rule, the input LayerNorms' gains are decayed
  (`decay_input_norms: true`; other biases and gains are not). The discriminator's hidden
  width is hidden_size // 2 by default (`disc_hidden: null`; the release's 128 at d 256).
- M modalities instead of exactly three: the descent starts from the last two modalities
  ([p_{M-1} ; p_{M-2}], i.e. [audio ; visual]) and prepends one modality per encoder
  ([p_m ; fused]), then fuses with C; M = 3 gives the authors' chain. M encoders in all.
- The label decoder's self-attention is unmasked (every label attends to every label): the spec
  is silent on a mask and a causal mask has no meaning for an unordered label set.
- `modality_label_scores` (B, M, L) is the decoder cross-attention mass (mean over heads and
  decoder layers) that each label puts on each modality's private tokens; the authors' code has
  no such output, it feeds the toolkit's modality-to-label heatmap.
- Position tables are at least the data's longest sequence (the authors use 60 unimodal and
  240 fusion positions and assert the data fits).
- Not here but elsewhere: the best epoch (not the last) is tested and the test loader is not
  shuffled or truncated (engine, §2.5); BertAdam is `optim.optimizer: bertadam`.
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
from mmerkit.models.base import MMERModel, ModelOutput, register_model
from mmerkit.models.layers import (
    LN_EPS,
    CommonPrivate,
    EncoderLayer,
    SoftAligner,
    TransformerEncoder,
    align_to_reference,
    aligned_lengths,
    attention_mask,
    bert_init,
    input_norm,
    xavier_matrices,
)
from mmerkit.models.losses import bce, modality_adversarial_loss, orthogonality_loss


class TailorConfig(ModelConfig):
    """TAILOR hyper-parameters; defaults are the authors' train.sh and model code (§2.4)."""

    renamed_fields: ClassVar[dict[str, str]] = {"cross_layers": "fusion_layers"}

    layers: dict[str, int] = Field(default_factory=lambda: {"text": 6, "visual": 4, "audio": 4})
    default_layers: int = 4  # for modalities not named in `layers`
    fusion_layers: int = 3  # layers of each granularity-descent encoder
    decoder_layers: int = Field(1, ge=1)
    hidden_size: int = 256
    num_heads: int = 8
    intermediate_size: int = 256
    dropout: float = 0.3  # encoders, fusion encoders, decoder, common projector
    private_dropout: float = 0.1
    common_dropout: float = 0.3
    head_dropout: float = 0.1  # on the label logits and the common-label logits
    disc_hidden: int | None = Field(None, ge=1)  # None: hidden_size // 2 (the release's 128 at 256)
    disc_dropout: float = 0.1
    max_positions: int = 60  # unimodal tables; raised to the data's longest sequence
    fusion_max_positions: int = 240  # raised to (M + 1) x the unimodal length
    grl_lambda: float = 1.0
    init_std: float = 0.02  # BERT's initializer_range (the authors' JSON configs)
    # the label side (label table, decoder layers, label head): "bert" = N(0, init_std) as the
    # authors; "xavier" = xavier-uniform matrices, i.e. scaled to the width (module docstring, Recipe)
    decoder_init: Literal["bert", "xavier"] = "bert"
    threshold: float = 0.35
    # the authors' hard-coded loss weights
    clf_weight: float = 1.0
    adv_weight: float = 0.01
    diff_weight: float = 5e-6
    cml_weight: float = 0.5
    ctc_weight: float = 0.5  # only when the aligner is used (unaligned data)
    # unaligned data: "auto" = soft CTC aligner when the DataSpec says the store is unaligned
    aligner: Literal["auto", "none", "ctc"] = "auto"
    # the aligner's target positions: "text" = the store's longest text (the release's
    # CTCModule(in_dim, 50): 51 channels with the blank); "positions" = max(max_positions, that)
    aligner_positions: Literal["text", "positions"] = "text"
    # CTC input length per sample: "aligned" = the release's, the post-alignment (text) length,
    # so CTC reads only the first 50 frames; "frames" (mmerkit's recipe, a named fix) = its own
    ctc_input_lengths: Literal["frames", "aligned"] = "aligned"
    # the release names its input LayerNorms so that its name rule decays their gains
    decay_input_norms: bool = True


def valid_positions(mask: Tensor) -> Tensor:
    """Position ids (B, n) that count valid steps only: the k-th valid step gets k - 1.

    The fused sequence [first ; second] holds each part's padding in the middle, so arange(n)
    would shift the second part's ids with the batch's padded length (a sample's answer would
    depend on its batch). Under a full mask this is arange(n), the authors' ids; padded steps
    repeat the previous id (or 0) and are masked out of every attention anyway.
    """
    return (mask.long().cumsum(1) - 1).clamp_min(0)


class FusionEncoder(nn.Module):
    """A granularity-descent encoder: [first ; second] + positions + token types (0 / 1)
    -> LayerNorm -> dropout -> post-LN layers. Returns the fused sequence and its mask."""

    def __init__(self, hidden: int, layers: int, heads: int, intermediate: int, dropout: float,
                 max_positions: int):
        super().__init__()
        self.positions = nn.Embedding(max_positions, hidden)
        self.token_types = nn.Embedding(2, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, intermediate, dropout)
                                    for _ in range(layers))

    def forward(self, first: Tensor, first_mask: Tensor, second: Tensor,
                second_mask: Tensor) -> tuple[Tensor, Tensor]:
        x, mask = torch.cat([first, second], 1), torch.cat([first_mask, second_mask], 1)
        n = x.shape[1]
        if n > self.positions.num_embeddings:
            raise ValueError(f"fused sequence of {n} steps exceeds fusion_max_positions="
                             f"{self.positions.num_embeddings}; raise it in the model config")
        types = (torch.arange(n, device=x.device) >= first.shape[1]).long()
        h = self.drop(self.norm(x + self.positions(valid_positions(mask)) + self.token_types(types)))
        am = attention_mask(mask)
        for layer in self.layers:
            h = layer(h, am)
        return h, mask


class Attention(nn.Module):
    """Multi-head attention of queries over a memory; also returns the head-averaged weights."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, q_in: Tensor, kv_in: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        b, n, d = q_in.shape
        h, dh = self.heads, d // self.heads
        q = self.query(q_in).view(b, n, h, dh).transpose(1, 2)
        k = self.key(kv_in).view(b, -1, h, dh).transpose(1, 2)
        v = self.value(kv_in).view(b, -1, h, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, h, n, T)
        am = attention_mask(mask)
        if am is not None:
            scores = scores.masked_fill(~am, torch.finfo(scores.dtype).min)
        att = scores.softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(y), att.mean(1)


class DecoderLayer(nn.Module):
    """Post-LN decoder layer: label self-attention, cross-attention to Z, GELU feed-forward."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(hidden, heads, dropout)
        self.cross_attn = Attention(hidden, heads, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, eps=LN_EPS) for _ in range(3))
        self.ffn_in, self.ffn_out = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        q = self.norms[0](q + self.drop(self.self_attn(q, q, None)[0]))
        y, att = self.cross_attn(q, memory, mask)
        q = self.norms[1](q + self.drop(y))
        q = self.norms[2](q + self.drop(self.ffn_out(F.gelu(self.ffn_in(q)))))
        return q, att


def alignment_ctc(scores: Tensor, frames: Tensor, text_lengths: Tensor) -> Tensor:
    """CTC loss (blank 0), summed over the batch as warp-ctc does, of the aligner's frame scores
    (B, T_in, C) against each sample's own targets 1..text_length (not the batch's padded text
    length, which would make the term depend on the other samples). Samples without a valid
    frame or text step are skipped; infeasible ones are zeroed (zero_infinity)."""
    keep = (frames > 0) & (text_lengths > 0)
    if not bool(keep.any()):
        return scores.sum() * 0.0
    logp = scores[keep].float().log_softmax(-1).transpose(0, 1)  # (T_in, B', C)
    lengths = text_lengths[keep].long()
    targets = torch.arange(1, int(lengths.max()) + 1, device=scores.device).expand(len(lengths), -1)
    return F.ctc_loss(logp, targets, frames[keep].long(), lengths, blank=0, reduction="sum",
                      zero_infinity=True)


def pad_steps(x: Tensor, mask: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """Zero-pad (B, T_x, D) and its (B, T_x) mask to t >= T_x steps."""
    extra = t - x.shape[1]
    if extra == 0:
        return x, mask
    return F.pad(x, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


@register_model("tailor", paper="TAILOR: Tailor Versatile Multi-modal Learning for Multi-label "
                "Emotion Recognition (Zhang et al., AAAI 2022)", year=2022, config=TailorConfig)
class TAILOR(MMERModel):
    """TAILOR for any DataSpec with M >= 1 modalities (see the module docstring)."""

    default_threshold = 0.35
    config: TailorConfig
    test_params: ClassVar[dict] = {
        # hidden 32: with batch-independent fusion positions the second parts' ids vary with
        # each sample's length, and hidden 16 then overfits 32 samples too slowly in some seeds
        "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "disc_hidden": 16,
        "layers": {"text": 1, "visual": 1, "audio": 1}, "fusion_layers": 1, "dropout": 0.0,
        "private_dropout": 0.0, "common_dropout": 0.0, "head_dropout": 0.0, "disc_dropout": 0.0,
        "init_std": 0.1}  # a wider init than BERT's 0.02 so 150 steps at lr 3e-3 suffice
    # decoder_init and the loss weights decide whether TAILOR leaves the label prior (configs/models/tailor.yaml)
    search_space: ClassVar[dict] = {
        "model.decoder_init": {"type": "categorical", "choices": ["bert", "xavier"]},
        "model.adv_weight": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        "model.cml_weight": {"type": "float", "low": 0.1, "high": 1.0},
        "model.threshold": {"type": "float", "low": 0.2, "high": 0.5}}

    def __init__(self, config: TailorConfig, spec: DataSpec):
        super().__init__(config, spec)
        c = config
        self.mods = spec.modality_names
        M, L, d = len(self.mods), spec.num_labels, c.hidden_size
        self.num_mods, self.num_labels = M, L
        self.use_aligner = c.aligner == "ctc" or (c.aligner == "auto" and not spec.aligned)
        lens = [spec.max_len.get(m, 0) for m in (self.mods[:1] if self.use_aligner else self.mods)]
        self.seq_len = max([c.max_positions, *lens])
        self.norms = nn.ModuleDict({m: input_norm(spec.modalities[m]) for m in self.mods})
        text_len = spec.max_len.get(self.mods[0], 0)
        self.align_len = text_len if c.aligner_positions == "text" and text_len else self.seq_len
        self.aligners = nn.ModuleDict({m: SoftAligner(spec.modalities[m], self.align_len)
                                       for m in self.mods[1:]} if self.use_aligner else {})
        self.extractors = nn.ModuleDict({
            m: TransformerEncoder(spec.modalities[m], d, c.layers.get(m, c.default_layers),
                                  c.num_heads, c.intermediate_size, c.dropout, self.seq_len)
            for m in self.mods})
        self.refine = CommonPrivate(d, M, c.private_dropout, c.common_dropout, c.disc_hidden or d // 2,
                                    c.disc_dropout)
        fusion_len = max(c.fusion_max_positions, (M + 1) * self.seq_len)
        self.fusion = nn.ModuleList(
            FusionEncoder(d, c.fusion_layers, c.num_heads, c.intermediate_size, c.dropout, fusion_len)
            for _ in range(M))
        self.label_emb = nn.Embedding(L, d)
        self.label_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.label_drop = nn.Dropout(c.dropout)
        self.decoder = nn.ModuleList(DecoderLayer(d, c.num_heads, c.intermediate_size, c.dropout)
                                     for _ in range(c.decoder_layers))
        self.head = nn.Linear(d, 1)
        self.cml_head = nn.Linear(d, L)
        self.head_drop = nn.Dropout(c.head_dropout)
        bert_init(self, c.init_std)  # every Linear, Embedding and LayerNorm (LSTMs keep theirs)
        if c.decoder_init == "xavier":
            xavier_matrices(self.label_emb, self.decoder, self.head)

    # ------------------------------------------------------------------ forward

    def _inputs(self, batch: Batch, aux: dict) -> tuple[list[Tensor], list[Tensor]]:
        """Normalised inputs of equal length T (aligned, padded, or soft-aligned to text)."""
        ref_mask = batch.masks[self.mods[0]]
        if self.use_aligner:  # the text's steps; a sample without text keeps its own (aligned_lengths)
            t = max([batch.inputs[self.mods[0]].shape[1], *(
                int(aligned_lengths(batch.masks[m], ref_mask, self.align_len).max())
                for m in self.aligners if ref_mask.shape[0])])
        else:
            t = max(batch.inputs[m].shape[1] for m in self.mods)
        xs, masks = [], []
        for m in self.mods:
            x, mask = self.norms[m](batch.inputs[m].float()), batch.masks[m]
            if m in self.aligners:
                x, aligned_mask, scores, _ = align_to_reference(self.aligners[m], x, mask, ref_mask, t)
                frames = mask.sum(1) if self.config.ctc_input_lengths == "frames" else ref_mask.sum(1)
                aux.setdefault("ctc", []).append((scores, frames.clamp(max=scores.shape[1]), ref_mask.sum(1)))
                mask = aligned_mask
            x, mask = pad_steps(x, mask, t)
            xs.append(x)
            masks.append(mask)
        return xs, masks

    def _descend(self, p: Tensor, masks: Tensor, common: Tensor, common_mask: Tensor):
        """Granularity descent: fuse the private sequences from the last modality to the first,
        then with C. Returns Z (B, (M+1)T, d), its mask and each token's source (M = common)."""
        M, T = self.num_mods, p.shape[2]
        seq, mask, src = p[:, M - 1], masks[:, M - 1], [M - 1]
        for i, m in enumerate(range(M - 2, -1, -1)):
            if i == 0:  # the authors' first encoder puts audio before visual
                seq, mask = self.fusion[i](seq, mask, p[:, m], masks[:, m])
                src = src + [m]
            else:
                seq, mask = self.fusion[i](p[:, m], masks[:, m], seq, mask)
                src = [m] + src
        z, z_mask = self.fusion[-1](seq, mask, common, common_mask)
        source = torch.tensor(src + [M], device=p.device).repeat_interleave(T)
        return z, z_mask, source

    def max_steps(self) -> dict[str, int | None]:
        # unaligned: every modality is soft-aligned onto the text's steps, so only text is capped
        if not self.use_aligner:
            return {m: self.seq_len for m in self.mods}
        return {m: min(self.seq_len, self.align_len) if i == 0 else None for i, m in enumerate(self.mods)}

    def forward(self, batch: Batch) -> ModelOutput:
        aux: dict = {}
        xs, mask_list = self._inputs(batch, aux)
        masks = torch.stack(mask_list, 1)  # (B, M, T)
        h = torch.stack([self.extractors[m](x, mk) for m, x, mk in zip(self.mods, xs, mask_list,
                                                                        strict=True)], 1)
        valid = masks[..., None].to(h.dtype)
        p = self.refine.private_features(h, valid)  # (B, M, T, d)
        c = self.refine.common_features(h, valid)
        common, common_mask = c.sum(1), masks.any(1)
        z, z_mask, source = self._descend(p, masks, common, common_mask)
        b = z.shape[0]
        q = self.label_drop(self.label_norm(self.label_emb.weight)).expand(b, -1, -1)
        att = 0.0
        for layer in self.decoder:
            q, a = layer(q, z, z_mask)
            att = att + a / len(self.decoder)
        logits = self.head_drop(self.head(q)).squeeze(-1)  # (B, L)
        onehot = F.one_hot(source, self.num_mods + 1).to(att.dtype)  # (N, M+1)
        scores = (att @ onehot)[..., : self.num_mods].transpose(1, 2)  # (B, M, L)
        aux.update(private=p, common_parts=c, common=common, masks=masks)
        steps = masks.sum(-1, keepdim=True).clamp_min(1).to(p.dtype)  # (B, M, 1)
        private_mean = p.sum(2) / steps  # (B, M, d): one t-SNE point per (sample, modality)
        common_mean = common.sum(1) / common_mask.sum(1, keepdim=True).clamp_min(1).to(p.dtype)
        return ModelOutput(logits=logits, probs=torch.sigmoid(logits),
                           features={"label": q, "private": private_mean, "common": common_mean},
                           modality_label_scores=scores, aux=aux)

    # ------------------------------------------------------------------ loss

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        c, a, y = self.config, out.aux, batch.labels
        terms: dict[str, Tensor] = {}
        if c.clf_weight:
            terms["bce"] = c.clf_weight * bce(out.logits, y)
        if c.adv_weight:
            adv_p, adv_c = modality_adversarial_loss(self.refine.discriminator, a["private"], a["common_parts"],
                                                     a["masks"], c.grl_lambda)
            terms["adv_private"], terms["adv_common"] = c.adv_weight * adv_p, c.adv_weight * adv_c
        if c.diff_weight:
            diff_p, diff_c = orthogonality_loss(a["private"], a["common_parts"])
            terms["diff_private"], terms["diff_common"] = c.diff_weight * diff_p, c.diff_weight * diff_c
        if c.cml_weight:
            cml_logits = self.head_drop(self.cml_head(a["common"][:, 0]))
            terms["cml"] = c.cml_weight * bce(cml_logits, y)
        if c.ctc_weight and "ctc" in a:
            terms["ctc"] = c.ctc_weight * sum(alignment_ctc(s, n, t) for s, n, t in a["ctc"])
        terms["total"] = sum(terms.values()) if terms else out.logits.sum() * 0.0
        return terms
