"""Embeddings for galaxy images from a checkpoint: the pooled body features, one row per galaxy, in Parquet parts.

    python -m gzoo.embed ckpt=PATH images=DIR|CATALOG out=FOLDER/|FILE.parquet [embedding_dtype=float16] [outputs=both] ...

The same command as gzoo.predict (the same sources, parts, resume, shards and processes; see
gzoo.survey) with outputs=embeddings by default: the id column, the carried catalogue columns, then
feature_0 ... feature_{F-1} (F = the body's width, e.g. 1280 for B0), or with embedding_layout=list one
fixed-width column "embedding". outputs=both adds the answers from the same pass. The embedding is
GalaxyNet.features: the body's globally pooled features, averaged over the tta views.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gzoo.config import run_tool
from gzoo.survey import EmbedOptions, run


def embed(o: EmbedOptions) -> Path:
    """Write the embeddings (and, with outputs=both, the predictions) of ``o.images``; returns the output."""
    return run(o, "embeddings")


def main(argv: list[str] | None = None) -> int:
    return run_tool(embed, EmbedOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
