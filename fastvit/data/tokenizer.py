"""Caption tokenizers for the CLIP text tower: offline byte-level (default) or a Hugging Face tokenizers JSON.

`encode_batch(texts)` -> (ids (B, L) int64, eot_idx (B,) int64): start token, the text's tokens, end
token, zero-padded (or cut so the end token stays last) to the context length.
"""

import torch


class ByteTokenizer:
    """UTF-8 bytes as tokens: pad 0, byte v -> v + 1, start 257, end 258 (vocabulary 259). Needs no files."""

    pad_id, sot_id, eot_id, vocab_size = 0, 257, 258, 259

    def __init__(self, context_length=77):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start + end tokens), got {context_length}")
        self.context_length = context_length

    def tokens(self, text):
        return [v + 1 for v in text.encode("utf-8")]

    def encode_batch(self, texts):
        return _pack([self.tokens(t) for t in texts], self.sot_id, self.eot_id, self.pad_id, self.context_length)


class HFTokenizer:
    """A Hugging Face `tokenizers` JSON file; start / end / pad are its special tokens when it has them."""

    _SOT = ("<|startoftext|>", "<s>", "[CLS]", "<bos>")
    _EOT = ("<|endoftext|>", "</s>", "[SEP]", "<eos>")
    _PAD = ("<pad>", "[PAD]", "<|pad|>")

    def __init__(self, path, context_length=77):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ValueError(
                f"objective.clip.tokenizer={path!r} needs the `tokenizers` package (pip install tokenizers); "
                "leave objective.clip.tokenizer empty for the built-in byte-level tokenizer"
            ) from e
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception type for missing / malformed files
            raise ValueError(f"cannot read tokenizer file {path!r}: {e}") from e
        self.context_length = context_length
        vocab = self.tok.get_vocab()
        self.vocab_size = self.tok.get_vocab_size()
        pick = lambda names, default: next((vocab[n] for n in names if n in vocab), default)
        self.eot_id = pick(self._EOT, None)
        if self.eot_id is None:
            raise ValueError(f"tokenizer {path!r} has no end-of-text token (looked for {self._EOT})")
        self.sot_id = pick(self._SOT, self.eot_id)
        self.pad_id = pick(self._PAD, 0)

    def encode_batch(self, texts):
        ids = [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]
        return _pack(ids, self.sot_id, self.eot_id, self.pad_id, self.context_length)


def _pack(token_lists, sot, eot, pad, L):
    ids = torch.full((len(token_lists), L), pad, dtype=torch.int64)
    eot_idx = torch.empty(len(token_lists), dtype=torch.int64)
    for i, toks in enumerate(token_lists):
        seq = [sot] + list(toks)[: L - 2] + [eot]
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        eot_idx[i] = len(seq) - 1
    return ids, eot_idx


def build_tokenizer(path="", context_length=77):
    """The byte-level tokenizer for an empty path, else the Hugging Face tokenizers JSON at `path`."""
    return HFTokenizer(path, context_length) if path else ByteTokenizer(context_length)
