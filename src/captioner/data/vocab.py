"""Karpathy-style tokenisation and the word vocabulary (built from the train split only)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioner.errors import ConfigError, DataError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

_APOSTROPHE = re.compile(r"['\u2019`]")
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case, drop apostrophes ("man's" -> "mans"), keep runs of letters and digits.

    This matches the tokens of Karpathy's ``dataset_*.json`` files: punctuation is stripped and
    hyphenated words split ("black-and-white" -> black, and, white).
    """
    return _WORD.findall(_APOSTROPHE.sub("", text.lower()))


class Vocab:
    """Word <-> id mapping with the four special tokens at ids 0..3."""

    def __init__(self, itos: Sequence[str]):
        if tuple(itos[:4]) != SPECIALS:
            raise DataError(f"vocabulary must start with {SPECIALS}, got {tuple(itos[:4])}; re-run prepare")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    @classmethod
    def build(
        cls, captions: Iterable[Sequence[str]], max_size: int | None = None, min_count: int = 1
    ) -> Vocab:
        """Most frequent words first (ties alphabetical), at most ``max_size`` ids including specials."""
        if min_count < 1:
            raise ConfigError(f"vocab min_count={min_count} must be >= 1")
        if max_size is not None and max_size <= len(SPECIALS):
            raise ConfigError(f"vocab max_size={max_size} must be > {len(SPECIALS)} (the special tokens)")
        counts = Counter(w for tokens in captions for w in tokens)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *words])

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """``<start> w1 .. wn <end>`` ids; words cut to ``max_len`` (training targets only)."""
        words = tokens if max_len is None else tokens[:max_len]
        return [START_ID, *(self.stoi.get(w, UNK_ID) for w in words), END_ID]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first ``<end>``, without ``<start>``/``<pad>`` (``<unk>`` is kept)."""
        words = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            words.append(self.itos[i])
        return words

    def to_json(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_json(cls, obj: dict) -> Vocab:
        return cls(obj["itos"])

    def save(self, path: str | Path) -> None:
        from captioner.data.records import write_json_atomic

        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cannot read vocabulary {path}: {err}; re-run prepare") from err
