"""The package's own small CLIP tokenizer: CLIP's byte-level BPE with merges learned from a built-in word list.

Its ids are valid for SD1.5's 49,408-token embedding, so it also serves the random-weight SD1.5 builds.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# --------------------------------------------------------------------------------------------------------------------
# Tiny tokenizer: CLIP's byte-level BPE with a vocabulary learned from a built-in word list.
# --------------------------------------------------------------------------------------------------------------------

TINY_TOKENIZER_WORDS: tuple[str, ...] = tuple(
    """
    a an the of with in on and at by for from to as is or
    photo photograph portrait picture image illustration drawing painting painted render art artwork
    cartoon character style disney pixar anime comic sketch digital concept studio cinematic animation animated
    movie film watercolor
    person people woman man girl boy child kid baby face head hair eyes smile smiling body full close up
    dog cat bird horse animal
    castle forest landscape background city street house room sky mountain river sea beach garden tree flower
    night day sunset light lighting
    white black red blue green yellow pink purple orange brown gray colorful bright dark
    high quality detailed simple cute beautiful happy young old little big small
    sks wearing standing sitting looking holding shirt dress hat glasses
    """.split()
)


def bytes_to_unicode() -> dict[int, str]:
    """Returns CLIP's (GPT-2's) reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


@functools.lru_cache(maxsize=1)
def _byte_map() -> dict[int, str]:
    """Cached :func:`bytes_to_unicode`."""
    return bytes_to_unicode()


def _word_symbols(word: str) -> tuple[str, ...]:
    """Splits a word into byte-level symbols, the last one carrying CLIP's end-of-word suffix ``</w>``."""
    byte_map = _byte_map()
    chars = [byte_map[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replaces every occurrence of ``pair`` in ``symbols`` by the merged symbol."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def learn_bpe_merges(words: tuple[str, ...] | list[str], max_merges: int | None = None) -> list[tuple[str, str]]:
    """Learns BPE merges greedily (most frequent pair, ties broken lexicographically) until every word is one token.

    The procedure is deterministic: the same word list always gives the same merges in the same order.
    """
    counts = Counter(_word_symbols(w) for w in words)
    merges: list[tuple[str, str]] = []
    while max_merges is None or len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new_counts: Counter[tuple[str, ...]] = Counter()
        for symbols, count in counts.items():
            new_counts[_merge_pair(symbols, best)] += count
        counts = new_counts
    return merges


def tiny_vocab(words: tuple[str, ...] | list[str] = TINY_TOKENIZER_WORDS) -> tuple[dict[str, int], list[str]]:
    """Builds the tiny tokenizer's ``vocab.json`` mapping and ``merges.txt`` lines, laid out like CLIP's.

    Order: the 256 byte symbols, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
    ``<|endoftext|>`` last (so bos = vocab_size - 2 and eos = pad = vocab_size - 1, as in CLIP).
    """
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base]
    merges = learn_bpe_merges(words)
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(set(tokens)) != len(tokens):
        raise ValueError("tiny tokenizer vocabulary has duplicate tokens")
    vocab = {token: index for index, token in enumerate(tokens)}
    return vocab, [f"{a} {b}" for a, b in merges]


def write_bpe_files(directory: str | os.PathLike, words: tuple[str, ...] = TINY_TOKENIZER_WORDS) -> None:
    """Writes the tiny tokenizer's classic ``vocab.json`` and ``merges.txt`` (merges learned from ``words``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab(words)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def write_tiny_tokenizer(directory: str | os.PathLike, words: tuple[str, ...] = TINY_TOKENIZER_WORDS) -> Any:
    """Writes the tiny CLIP tokenizer to ``directory`` and returns it as a ``transformers.CLIPTokenizer``.

    The tokenizer is read back from the written ``vocab.json`` / ``merges.txt``, which works with both the slow
    (transformers 4) and the tokenizers-backed (transformers 5) ``CLIPTokenizer``. Like SD1.5's tokenizer it pads
    with ``<|endoftext|>`` and has ``model_max_length`` 77.
    """
    from transformers import CLIPTokenizer

    write_bpe_files(directory, words)
    tokenizer = CLIPTokenizer.from_pretrained(
        directory,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.save_pretrained(directory)
    write_bpe_files(directory, words)  # keep the canonical formatting whatever save_pretrained wrote
    return tokenizer

