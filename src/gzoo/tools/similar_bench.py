"""Benchmark of the approximate index (gzoo.neighbours): its recall against exact search, and a query's time, at survey scale.

    python -m gzoo.tools.similar_bench rows=[100000,1000000] width=1280 like=EMBEDDINGS out=outputs/similar_bench

For each size, random vectors of the embedding's width are written as a folder of embedding parts (float16, as
python -m gzoo.embed ... embedding_dtype=float16 embedding_layout=list writes them), the index is built from them
as gzoo.similar builds it (index.kind=ivf; nprobe chosen at build time for index.recall), and then measured with
``queries`` new vectors of the same distribution: recall@10 against exact search (numpy, streamed over the parts)
and the time of one query at a time (median and 95th percentile, faiss on ``threads`` threads). ``like`` draws
the vectors from a Gaussian with the mean and covariance of real embeddings (the spectrum of a real embedding,
without its clusters); without it they are isotropic Gaussian, the hardest case for an inverted-list index.
Prints a Markdown table and writes it with the numbers to out/similar_bench.json; the parts are removed after.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gzoo.config import option, run_tool
from gzoo.io import atomic_write_text
from gzoo.log import say
from gzoo.neighbours import Embeddings, IndexOptions, build_index, exact_topk


@dataclass
class BenchOptions:
    rows: list[int] = option([100_000, 1_000_000], "sizes of the random sets", low=1000)
    width: int = option(1280, "the vectors' width (1280: EfficientNet-Lite0 and B0's pooled features)", low=2)
    like: Path | None = option(None, "embeddings whose mean and covariance the vectors are drawn from (unset: isotropic Gaussian)")
    queries: int = option(1000, "new vectors whose recall@10 is measured", low=10)
    timed: int = option(200, "queries timed one at a time", low=10)
    pca: int = option(0, "the index's index.pca")
    kind: str = option("ivf", "the index's kind", choices=("ivf", "ivfpq", "flat"))
    threads: int = option(2, "faiss's threads", low=1)
    part_size: int = option(10_000, "rows per part", low=100)
    out: Path = option(Path("outputs/similar_bench"), "work folder (the parts are removed after) and similar_bench.json")
    seed: int = option(0, "the vectors' seed")


class Draw:
    """Vectors from N(mean, cov) of real embeddings (or N(0, I)): x = mean + z @ A with A A^T = cov."""

    def __init__(self, width: int, like: Path | None, seed: int):
        self.rng = np.random.default_rng(seed)
        self.mean, self.a = np.zeros(width, np.float32), None
        if like is not None:
            x = np.concatenate([v for _, v in Embeddings(like).parts()]).astype(np.float64)
            if x.shape[1] != width:
                raise SystemExit(f"like={like} has width {x.shape[1]}, not {width}")
            self.mean = x.mean(0).astype(np.float32)
            vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
            self.a = (vecs * np.sqrt(np.maximum(vals, 0))).T.astype(np.float32)

    def __call__(self, n: int) -> np.ndarray:
        z = self.rng.standard_normal((n, len(self.mean)), dtype=np.float32)
        return (self.mean + (z @ self.a if self.a is not None else z)).astype(np.float32)


def write_parts(folder: Path, rows: int, draw: Draw, part_size: int) -> None:
    """A folder of embedding parts as gzoo.embed writes them (float16, one list column), with its manifest."""
    from gzoo.survey import MANIFEST, PARTS_FORMAT, part_name

    folder.mkdir(parents=True, exist_ok=True)
    count = -(-rows // part_size)
    for k in range(count):
        n = min(part_size, rows - k * part_size)
        x = draw(n).astype(np.float16)
        table = pa.table(
            {
                "GalaxyID": pa.array(np.arange(k * part_size, k * part_size + n)),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
            }
        )
        pq.write_table(table, folder / part_name(k))
    made_by = {
        "checkpoint_sha256": "random",
        "outputs": "embeddings",
        "tta": 1,
        "id_column": "GalaxyID",
        "carry": [],
        "embedding_dtype": "float16",
        "embedding_layout": "list",
    }
    (folder / MANIFEST).write_text(
        json.dumps({"format": PARTS_FORMAT, "what": "embeddings", "parts": count, "rows": rows, "made_by": made_by, "fingerprint": f"random-{rows}"})
    )


def bench(o: BenchOptions) -> list[dict]:
    draw = Draw(o.width, o.like, o.seed)
    results = []
    for rows in o.rows:
        folder = o.out / f"random-{rows}"
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        write_parts(folder, rows, draw, o.part_size)
        say(f"{rows} random vectors of width {o.width} written in {time.perf_counter() - start:.0f} s")
        emb = Embeddings(folder)
        index = build_index(emb, IndexOptions(kind=o.kind, pca=o.pca, threads=o.threads), progress=False)
        queries = draw(o.queries)
        qx = index.transform(queries)
        best_s = np.full((len(qx), 10), -np.inf, np.float32)
        best_r = np.full((len(qx), 10), -1, np.int64)
        start = time.perf_counter()
        for first, vectors in emb.parts():
            s, r = exact_topk(qx, index.transform(vectors), 10, index.cosine)
            s_all, r_all = np.concatenate([best_s, s], 1), np.concatenate([best_r, r + first], 1)
            top = np.argsort(-s_all, axis=1, kind="stable")[:, :10]
            best_s, best_r = np.take_along_axis(s_all, top, 1), np.take_along_axis(r_all, top, 1)
        exact_ms = (time.perf_counter() - start) / len(qx) * 1000
        _, found = index.search(queries, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, best_r)]))
        times = []
        for q in queries[: o.timed]:
            t0 = time.perf_counter()
            index.search(q[None], 10)
            times.append((time.perf_counter() - t0) * 1000)
        rec = index.record
        result = {
            "rows": rows,
            "width": o.width,
            "vectors": "like " + str(o.like) if o.like else "isotropic Gaussian",
            "index": f"{rec['kind']}, {rec['metric']}, {rec['dims']} dims, nlist {rec['nlist']}, nprobe {rec['nprobe']}",
            "build_s": rec["seconds"],
            "recall@10": round(recall, 4),
            "query_ms_median": round(float(np.median(times)), 2),
            "query_ms_p95": round(float(np.percentile(times, 95)), 2),
            "exact_numpy_ms_per_query_batched": round(exact_ms, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "load_average_1min": os.getloadavg()[0],
        }
        say(json.dumps(result))
        results.append(result)
        del index
        shutil.rmtree(folder, ignore_errors=True)
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for res in results:
        print("| " + " | ".join(str(res[k]) for k in keys) + " |")
    o.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(o.out / "similar_bench.json", json.dumps(results, indent=1))
    return results


def main(argv: list[str] | None = None) -> int:
    return run_tool(bench, BenchOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
