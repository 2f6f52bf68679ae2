"""The CLIP BPE tokenizer of SD 1.x, built offline from the vocabulary that open_clip ships."""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from transformers import CLIPTokenizer

# CLIP's vocabulary: 256 byte characters, the same with "</w>", 48,894 merges and 2 specials.
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 256 * 2 - 2


def _byte_unicode_table() -> list[str]:
    """Return the GPT-2/CLIP byte characters in vocabulary order.

    Printable bytes map to themselves and come first; the other bytes map to 256 + n and follow,
    which is the order of the first 256 vocabulary entries.
    """
    byte_values = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    byte_values += list(range(ord("®"), ord("ÿ") + 1))
    codes = byte_values[:]
    extra = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_vocab(directory: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` from open_clip's `bpe_simple_vocab_16e6.txt.gz`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe_path = files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        # The first line is a version header; the merges follow in priority order.
        merges = handle.read().split("\n")[1 : NUM_MERGES + 1]
    byte_chars = _byte_unicode_table()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"built a CLIP vocabulary of {len(tokens)} tokens, expected {VOCAB_SIZE}")
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def build_clip_tokenizer(directory: str | Path | None = None) -> CLIPTokenizer:
    """Return SD 1.x's tokenizer (max length 77, padded with `<|endoftext|>`).

    With `directory`, the vocabulary files are written there and the tokenizer is saved with them,
    so the folder is a complete `tokenizer/` component; otherwise a cached copy is returned.
    """
    if directory is None:
        return _cached_tokenizer()
    write_clip_vocab(directory)
    tokenizer = _from_vocab_folder(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer


@lru_cache(maxsize=1)
def _cached_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocab(tmp)
        return _from_vocab_folder(tmp)


def _from_vocab_folder(directory: str | Path) -> CLIPTokenizer:
    # from_pretrained reads vocab.json and merges.txt under the names both the slow (transformers
    # 4) and the tokenizers-backed (transformers 5) CLIPTokenizer expect.
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=77, pad_token="<|endoftext|>")
