"""The CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

Stable Diffusion 1.5, LaVie and AnimateDiff all use OpenAI CLIP's tokenizer (49,408 tokens). Its
byte-pair merges are in open_clip's `bpe_simple_vocab_16e6.txt.gz`, so a transformers
`CLIPTokenizer` with identical ids can be built without downloading anything.
"""

from __future__ import annotations

import gzip
import json
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
    """Build the CLIP tokenizer, and save it in `directory` when one is given.

    The folder contains `vocab.json`, `merges.txt` and `tokenizer_config.json`, like Stable
    Diffusion 1.5's tokenizer folder on the hub, and `CLIPTokenizer.from_pretrained` loads it. It
    takes 1.4 MB, against 3.6 MB for the `tokenizer.json` that `save_pretrained` writes.

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
        save_clip_tokenizer(tokenizer, merges, Path(directory))
    return tokenizer


def save_clip_tokenizer(tokenizer: CLIPTokenizer, merges: list[str], directory: Path) -> None:
    """Write the vocabulary, the merges and the tokenizer settings into `directory`, one file each."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        }, indent=2) + "\n",
    }
    for name, text in files.items():
        temporary = directory / f"{name}.tmp"
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(directory / name)
