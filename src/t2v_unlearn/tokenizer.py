"""The CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

Stable Diffusion 1.5, LaVie and AnimateDiff all use OpenAI CLIP's tokenizer (49,408 tokens). Its
byte-pair merges are in open_clip's `bpe_simple_vocab_16e6.txt.gz`, so a transformers
`CLIPTokenizer` with identical ids can be built without downloading anything.
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPTokenizer

# OpenAI CLIP uses the first 49,152 - 256 - 2 merges of the file (its first line is a header).
NUM_MERGES = 49152 - 256 - 2
MODEL_MAX_LENGTH = 77


def _merges() -> list[str]:
    path = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(str(path), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    return lines[1 : NUM_MERGES + 1]


def build_clip_tokenizer(directory: str | Path | None = None) -> CLIPTokenizer:
    """Build the CLIP tokenizer; with `directory`, also save it there (`save_pretrained` layout).

    The vocabulary is the 256 byte characters, the same with `</w>`, one token per merge, then
    `<|startoftext|>` (49406) and `<|endoftext|>` (49407), which also serves as the padding token.
    """
    merges = _merges()
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [char + "</w>" for char in byte_chars]
    vocab_list += ["".join(merge.split()) for merge in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_list)}

    # transformers 5 builds CLIPTokenizer from an in-memory vocabulary and merge list.
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=[tuple(merge.split()) for merge in merges],
        model_max_length=MODEL_MAX_LENGTH,
        pad_token="<|endoftext|>",
    )
    if directory is not None:
        tokenizer.save_pretrained(str(directory))
    return tokenizer
