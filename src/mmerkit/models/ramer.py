"""RAMer: Reconstruction-based Adversarial Model for Multi-party Multi-modal Multi-label Emotion
Recognition (Yang et al., 2025, arXiv 2502.10435).

Implemented from specs/peers.md §3. The released RAMer code is CARAT's code plus three changes
(§3.1), so this model is `CARAT` (carat.py, whose docstring lists the shared equations and
departures) plus:

    personality (optional, §3.3; on when the store has the extra input named `personality`):
      U_m   = LN(e_m + W_m [e_m ; p])                      p = extras[personality] (B, P)
      U_m   = LN(U_m + Attn_inter(U_m))  over the batch samples of the same clip (extras[group])
      U_m   = LN(U_m + Attn_intra(U_m))  over the batch samples of the same person (extras[person])
    prototype padding (§3.3, §3.6): where modality k of a sample is missing, its prototype
      weights are the mean of the present modalities' weights for the same label, and the
      decoded intrinsic vector D_k(c_k) stands in for r_k in every first-level slot
    adversarial module (§3.3-3.4, TAILOR's §2.2 on label slots instead of time steps):
      p_m   = tanh(Drop_0.1(W_p^m U_m))        private, from the ORIGINAL label-wise features
      c_m   = tanh(Drop_0.3(W_c SRR_m))        common, ONE projector, from the RECONSTRUCTED ones
      adv_private  adv_weight  * sum_m CE(D(p_m), m)            D shared, per label slot
      adv_common   adv_weight  * sum_m CE(D(GRL(c_m)), m)
      diff_private diff_weight * sum_{m<n} diff(p_m, p_n);  diff_common diff_weight * sum_m diff(c_m, p_m)
      cml          cml_weight  * BCE(<sum_m c_m[l], w_l> + b_l, y)   common-label loss
    stack shuffle (§3.5) replaces CARAT's random permutations in the shuffle_aug_clf term:
      shuffle_mode = "interleave" (default, the intended deal), "random" (CARAT's),
      "upstream_reverse" (the released function: a reversal, the same for every label)

Defaults are RAMer's train.sh (§3.8): 3/3/3 extractor layers, 500 positions, shuffle_aug_clf 1.0,
total_aug_clf 0.0 (the released code computes the un-shuffled aggregator loss and drops it),
adv 0.01, diff 5e-6, cml 0.5; every other CARAT field keeps CARAT's default.

Departures from the released code, and why:
- The released code does not run (§3.9: import, unpacking and NameErrors); the adversarial module
  is on by default (`adversarial: true`) because without `--comp_adv_loss` the forward raises.
- The stack shuffle "as intended" is underspecified: a deterministic deal of the index list into
  k stacks is the same permutation for every label, and with k = M = 3 it is the identity on
  modalities, which would mix nothing. Our "interleave": the list is rotated by the slot index
  before dealing (by l*M + m for samples of label l, modality row m; by l + b for modalities of
  label l, sample b), then dealt round-robin from k contiguous stacks, `shuffle_rounds` times.
  So each label slot of a synthetic row comes from another (sample, modality), deterministically.
- Common-label loss on label slots: TAILOR's Linear(d -> C) on the first time step has no
  counterpart for label-wise features; each label is scored from its own slot of sum_m c_m.
- Personality attention: RAMer's MEmoR path (never wired up in the release, §3.9-4) attends
  across the characters of a clip and across a character's segments. mmerkit's MEmoR samples
  are per (clip, character) sequences of segments, so the intra-person context over segments is
  the extractor's own attention; the two attentions here run over the samples of the current
  batch that share `group` (clip) or `person` (character) ids, keys of samples whose modality
  is missing masked out. Without those extras the branch is the personality fusion alone.
- Prototype padding: the release has no missing-modality input path (MOSEI has none); the
  consensus weights above are our reading of "prototypes stand in for a missing modality".
- The CTC modules the release builds but never applies (§3.6) are CARAT's working aligner here.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import ModelOutput, register_model
from mmerkit.models.carat import CARAT, CaratConfig
from mmerkit.models.layers import LN_EPS, CommonPrivate, SelfAttention
from mmerkit.models.losses import bce, modality_adversarial_loss, orthogonality_loss

ShuffleMode = Literal["interleave", "random", "upstream_reverse"]


class RamerConfig(CaratConfig):
    """RAMer hyper-parameters: CARAT's fields plus §3.3-3.5; defaults are RAMer's train.sh."""

    layers: dict[str, int] = Field(default_factory=lambda: {"text": 3, "visual": 3, "audio": 3})
    default_layers: int = 3
    max_positions: dict[str, int] = Field(default_factory=dict)  # 500 for every modality
    shuffle_aug_clf_weight: float = 1.0
    total_aug_clf_weight: float = 0.0
    # adversarial common/private module (TAILOR's weights)
    adversarial: bool = True
    adv_weight: float = 0.01
    diff_weight: float = 5e-6
    cml_weight: float = 0.5
    private_dropout: float = 0.1
    common_dropout: float = 0.3
    head_dropout: float = 0.1
    disc_hidden: int = 128
    disc_dropout: float = 0.1
    grl_lambda: float = 1.0
    # stack shuffle
    shuffle_mode: ShuffleMode = "interleave"
    sample_stacks: int = Field(4, ge=1)
    modality_stacks: int = Field(3, ge=1)
    shuffle_rounds: int = Field(2, ge=1)
    # missing modalities and personality
    prototype_padding: bool = True
    personality: str | None = "personality"  # extra input name; used when the store has it
    group: str | None = "clip"  # extra with a scene id: inter-person attention
    person: str | None = "character"  # extra with a person id: intra-person attention
    personality_heads: int = Field(4, ge=1)


def deal_order(n: int, stacks: int, rounds: int, device: torch.device | None = None) -> Tensor:
    """The stack deal: split positions 0..n-1 into `stacks` contiguous stacks (sizes as
    np.array_split), take one from each stack in turn, `rounds` times. Returns the permutation
    `order` with dealt = items[order].

    >>> deal_order(6, 2, 1).tolist()
    [0, 3, 1, 4, 2, 5]
    """
    k = min(stacks, n)
    sizes = torch.full((k,), n // k, dtype=torch.long, device=device)
    sizes[: n % k] += 1
    stack = torch.repeat_interleave(torch.arange(k, device=device), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    pos_in_stack = torch.arange(n, device=device) - starts[stack]
    once = torch.argsort(pos_in_stack * k + stack)
    order = torch.arange(n, device=device)
    for _ in range(rounds):
        order = order[once]
    return order


@register_model("ramer", paper="RAMer: Reconstruction-based Adversarial Model for Multi-party "
                "Multi-modal Multi-label Emotion Recognition (Yang et al., 2025)",
                year=2025, config=RamerConfig)
class RAMer(CARAT):
    """RAMer for any DataSpec with M >= 1 modalities (see the module docstring)."""

    config: RamerConfig
    test_params: ClassVar[dict] = {**CARAT.test_params, "disc_hidden": 8, "private_dropout": 0.0,
                                   "common_dropout": 0.0, "head_dropout": 0.0, "disc_dropout": 0.0,
                                   "personality_heads": 2, "proj_size": 16}
    search_space: ClassVar[dict] = {
        **CARAT.search_space,
        "model.adv_weight": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        "model.cml_weight": {"type": "float", "low": 0.1, "high": 1.0}}

    def __init__(self, config: RamerConfig, spec: DataSpec):
        super().__init__(config, spec)
        c, M, L, d = config, self.num_mods, self.num_labels, config.hidden_size
        self.personality_dim = spec.extras.get(c.personality, 0) if c.personality else 0
        self.group_key = c.group if c.group in spec.extras else None
        self.person_key = c.person if c.person in spec.extras else None
        if self.personality_dim:
            self.person_fuse = nn.ModuleList(nn.Linear(d + self.personality_dim, d) for _ in range(M))
            self.person_norm = nn.LayerNorm(d, eps=LN_EPS)
            self.context_attn = nn.ModuleDict({
                key: SelfAttention(d, c.personality_heads, c.dropout)
                for key, name in (("group", self.group_key), ("person", self.person_key)) if name})
            self.context_norm = nn.ModuleDict({k: nn.LayerNorm(d, eps=LN_EPS) for k in self.context_attn})
        if c.adversarial:
            self.refine = CommonPrivate(d, M, c.private_dropout, c.common_dropout, c.disc_hidden,
                                        c.disc_dropout)
            self.head_drop = nn.Dropout(c.head_dropout)
            self.cml_head = nn.Parameter(torch.empty(L, d))
            self.cml_bias = nn.Parameter(torch.zeros(L))
            nn.init.xavier_uniform_(self.cml_head)

    # ------------------------------------------------------------------ personality

    def _extract(self, batch: Batch, aux: dict) -> Tensor:
        e = super()._extract(batch, aux)
        if not self.personality_dim:
            return e
        return self._with_personality(e, batch)

    def _with_personality(self, e: Tensor, batch: Batch) -> Tensor:
        """Fuse the personality vector into every label slot, then attend across the batch
        samples of the same clip and of the same person (keys of missing modalities masked)."""
        B, M, L, _ = e.shape
        p = batch.extras[self.config.personality].to(e.dtype)
        fused = torch.stack([self.person_fuse[m](torch.cat([e[:, m], p[:, None].expand(B, L, -1)], -1))
                             for m in range(M)], 1)
        u = self.person_norm(e + fused)
        present = batch.present.to(e.device)
        eye = torch.eye(B, dtype=torch.bool, device=e.device)
        for key, name in (("group", self.group_key), ("person", self.person_key)):
            if name is None:
                continue
            ids = batch.extras[name][:, 0]
            same = ids[:, None] == ids[None, :]  # (B, B): query row, key column
            mask = (same[None] & present.T[:, None, :]) | eye  # (M, B, B); self always visible
            x = u.permute(1, 2, 0, 3).reshape(M * L, B, -1)  # batch as the sequence axis
            att_mask = mask[:, None, None].expand(M, L, 1, B, B).reshape(M * L, 1, B, B)
            y = self.context_attn[key](x, att_mask).view(M, L, B, -1).permute(2, 0, 1, 3)
            u = self.context_norm[key](u + y)
        return u

    # ------------------------------------------------------------------ prototype padding

    def _prototype_weights(self, z: Tensor, present: Tensor) -> Tensor:
        w = super()._prototype_weights(z, present)
        if not self.config.prototype_padding or bool(present.all()):
            return w
        keep = present[:, :, None, None].to(w.dtype)  # (B, M, 1, 1)
        consensus = (w * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1.0)
        consensus = torch.where(keep.sum(1, keepdim=True) > 0, consensus, torch.full_like(consensus, 0.5))
        return torch.where(keep.bool(), w, consensus)

    def _first_level_slots(self, r: Tensor, intrinsic: Tensor, present: Tensor) -> Tensor:
        if not self.config.prototype_padding:
            return r
        return torch.where(present[:, :, None, None], r, intrinsic)

    # ------------------------------------------------------------------ losses

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        terms = super().loss(out, batch)
        c = self.config
        if not c.adversarial or not (c.adv_weight or c.diff_weight or c.cml_weight):
            return terms
        a, y = out.aux, batch.labels
        present = a["present"]
        valid = present[:, :, None, None].to(a["e"].dtype)
        private = self.refine.private_features(a["e"], valid)  # (B, M, L, d)
        common = self.refine.common_features(a["srr"], valid)
        masks = present[:, :, None].expand(-1, -1, self.num_labels)
        extra: dict[str, Tensor] = {}
        if c.adv_weight:
            adv_p, adv_c = modality_adversarial_loss(self.refine.discriminator, private, common, masks,
                                                     c.grl_lambda)
            extra["adv_private"], extra["adv_common"] = c.adv_weight * adv_p, c.adv_weight * adv_c
        if c.diff_weight:
            diff_p, diff_c = orthogonality_loss(private, common)
            extra["diff_private"], extra["diff_common"] = c.diff_weight * diff_p, c.diff_weight * diff_c
        if c.cml_weight:
            cml = self.head_drop((common.sum(1) * self.cml_head).sum(-1) + self.cml_bias)
            extra["cml"] = c.cml_weight * bce(cml, y)
        terms["total"] = terms["total"] + sum(extra.values())
        return {**{k: v for k, v in terms.items() if k != "total"}, **extra, "total": terms["total"]}

    # ------------------------------------------------------------------ stack shuffle

    def shuffle(self, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Stack shuffle (§3.5): S'[b,m,l] = S[sample[b,m,l], mod[b,m,l], l], targets y[sample, l]."""
        mode = self.config.shuffle_mode
        if mode == "random":
            return super().shuffle(s, y)
        sample, mod = self.stack_indices(*s.shape[:3], device=s.device)
        lab = torch.arange(s.shape[2], device=s.device)[None, None, :].expand_as(sample)
        return s[sample, mod, lab], y[sample, lab]

    def stack_indices(self, B: int, M: int, L: int, device=None) -> tuple[Tensor, Tensor]:
        """(sample, modality) source indices (B, M, L) of the deterministic modes."""
        c = self.config
        b = torch.arange(B, device=device)[:, None, None]
        m = torch.arange(M, device=device)[None, :, None]
        lab = torch.arange(L, device=device)[None, None, :]
        if c.shuffle_mode == "upstream_reverse":  # sorted(list, reverse=True): a plain reversal
            sample, mod = (B - 1 - b).expand(B, M, L), (M - 1 - m).expand(B, M, L)
        else:
            # items rotated by r: items[q] = (q - r) mod n, so dealt[i] = (order[i] - r) mod n
            shift_b = lab * M + m
            sample = (deal_order(B, c.sample_stacks, c.shuffle_rounds, device)[:, None, None] - shift_b) % B
            shift_m = lab + b
            mod = (deal_order(M, c.modality_stacks, c.shuffle_rounds, device)[None, :, None] - shift_m) % M
        if not c.sample_shuffle:
            sample = b.expand(B, M, L)
        if not c.modality_shuffle:
            mod = m.expand(B, M, L)
        return sample, mod
