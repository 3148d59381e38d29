"""Pretrained word vectors: GloVe-format text files copied into an embedding's rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from captioner.errors import ConfigError, DataError


def load_glove(embedding: nn.Embedding, path: str | Path, itos: Sequence[str]) -> int:
    """Copy GloVe-format vectors ("word v1 ... vE" per line) into ``embedding`` rows; returns words found.

    Words missing from the file keep their random initialisation.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"decoder.pretrained_embeddings={str(path)!r}: file not found; give a GloVe text file"
        )
    dim = embedding.embedding_dim
    stoi = {w: i for i, w in enumerate(itos)}
    found = 0
    with torch.no_grad(), path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            word, *values = line.rstrip().split(" ")
            if word not in stoi:
                continue
            if len(values) != dim:
                raise ConfigError(
                    f"decoder.pretrained_embeddings={str(path)!r} line {lineno} has {len(values)} values, "
                    f"decoder.embed_dim={dim}; set embed_dim to the file's dimension"
                )
            embedding.weight[stoi[word]] = torch.tensor([float(v) for v in values])
            found += 1
    return found
