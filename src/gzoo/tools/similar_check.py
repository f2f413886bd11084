"""How well similarity search and the unusual ranking follow volunteers' answers, on real galaxies (gz2-2k).

    python -m gzoo.tools.similar_check finetuned=EMB_A imagenet=EMB_B labels=../shared/data/gz2-2k/training_solutions_partial.csv out=DIR

``finetuned`` and ``imagenet`` are folders of embeddings (python -m gzoo.embed ... outputs=both out=FOLDER/) of the
same galaxies: the first from a checkpoint whose body was trained (a fulltune), the second from one whose body is
the frozen ImageNet body (a finetune: its body is not trained, so its embedding is the ImageNet body's features).

Similarity: for the query galaxies volunteers called clearly smooth (Class1.1 >= 0.8) and clearly featured
(Class1.2 >= 0.8), the share of their k=10 nearest other galaxies whose majority answer to question 1 is the
query's, beside the base rate (the share among all other galaxies: a random neighbour), for several indexes (each
kept under out/indexes/), and for the queries of the run's validation part alone (their labels were never trained on).
Unusual: the share of galaxies volunteers called odd (Class6.1 >= 0.5) among the top 5 % of each score,
beside their share overall. Prints the two Markdown tables and writes them, with the numbers, to out/similar_check.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gzoo.config import REQUIRED, option, run_tool
from gzoo.data.split import split_ids
from gzoo.io import atomic_write_text
from gzoo.log import say
from gzoo.neighbours import Embeddings, IndexOptions, open_index
from gzoo.unusual import scores

Q1 = ["Class1.1", "Class1.2", "Class1.3"]


@dataclass
class CheckOptions:
    finetuned: Path = option(REQUIRED, "embeddings (outputs=both) from the checkpoint whose body was trained")
    imagenet: Path = option(REQUIRED, "embeddings of the same galaxies from a checkpoint with the frozen ImageNet body (a finetune)")
    labels: Path = option(REQUIRED, "the volunteers' answers: a Kaggle labels CSV with GalaxyID, Class1.1 ...")
    out: Path = option(Path("outputs/similar_check"), "folder for the indexes and similar_check.json")
    k: int = option(10, "neighbours per query", low=1)
    top: float = option(0.05, "the share of galaxies counted as the top of an unusual ranking", above=0, high=1)
    val_fraction: float = option(0.2, "the training run's data.val_fraction (for the validation-only rows)")
    split_seed: int = option(1234, "the training run's data.split_seed")
    progress: bool = option(False, "show progress bars")


def check(o: CheckOptions) -> dict:
    labels = pd.read_csv(o.labels).set_index("GalaxyID")
    sets = {"finetuned": Embeddings(o.finetuned), "imagenet": Embeddings(o.imagenet)}
    ids = {name: emb.ids() for name, emb in sets.items()}
    if not np.array_equal(ids["finetuned"], ids["imagenet"]):
        raise SystemExit("the two embeddings hold other galaxies or another order")
    gid = ids["finetuned"]
    truth = labels.loc[gid]
    majority = truth[Q1].to_numpy().argmax(1)
    val = np.isin(gid, split_ids(gid, o.val_fraction, 0.0, o.split_seed)["val"])
    groups = {"smooth (Class1.1 >= 0.8)": (truth["Class1.1"] >= 0.8).to_numpy(), "featured (Class1.2 >= 0.8)": (truth["Class1.2"] >= 0.8).to_numpy()}
    n = len(gid)

    def share(rows: np.ndarray, queries: np.ndarray) -> float:
        return float((majority[rows[queries]] == majority[queries][:, None]).mean())

    configs: list[tuple[str, str, dict[str, Any]]] = [
        ("imagenet", "plain cosine (flat)", {"metric": "cosine", "pca": 0, "whiten": False, "kind": "flat"}),
        ("imagenet", "PCA 64, cosine", {"metric": "cosine", "pca": 64, "whiten": False, "kind": "flat"}),
        ("imagenet", "PCA 64 + whitening, cosine", {"metric": "cosine", "pca": 64, "whiten": True, "kind": "flat"}),
        ("finetuned", "plain cosine (flat)", {"metric": "cosine", "pca": 0, "whiten": False, "kind": "flat"}),
        ("finetuned", "PCA 64, cosine", {"metric": "cosine", "pca": 64, "whiten": False, "kind": "flat"}),
        ("finetuned", "PCA 64 + whitening, cosine", {"metric": "cosine", "pca": 64, "whiten": True, "kind": "flat"}),
        ("finetuned", "PCA 16 + whitening, cosine", {"metric": "cosine", "pca": 16, "whiten": True, "kind": "flat"}),
        ("finetuned", "PCA 32, cosine", {"metric": "cosine", "pca": 32, "whiten": False, "kind": "flat"}),
        ("finetuned", "PCA 128, cosine", {"metric": "cosine", "pca": 128, "whiten": False, "kind": "flat"}),
        ("finetuned", "PCA 64, cosine, IVF (approximate)", {"metric": "cosine", "pca": 64, "whiten": False, "kind": "ivf", "nlist": 32}),
        ("finetuned", "plain L2 (flat)", {"metric": "l2", "pca": 0, "whiten": False, "kind": "flat"}),
    ]
    rows_sim: list[dict[str, Any]] = []
    indexes = {}
    base = {g: (majority[:, None] == majority[None, :]).sum(1)[q].mean() / (n - 1) - 1 / (n - 1) for g, q in groups.items()}  # other galaxies only
    rows_sim.append({"embedding": "(a random other galaxy: the base rate)", "index": "", **{g: float(v) for g, v in base.items()}})
    for which, label, settings in configs:
        emb = sets[which]
        name = f"{which}-{label.split(' (')[0].replace(' ', '_').replace('+', '').replace(',', '')}".replace("__", "_")
        idx = open_index(emb, IndexOptions(folder=o.out / "indexes" / name, rebuild=True, **settings), o.progress)
        indexes[(which, label)] = idx
        vectors = np.concatenate([v for _, v in emb.parts()])
        _, nn = idx.neighbours(vectors, o.k, np.arange(n))
        row: dict[str, Any] = {"embedding": f"{'fine-tuned body' if which == 'finetuned' else 'frozen ImageNet body'}", "index": label}
        for g, q in groups.items():
            row[g] = share(nn, np.flatnonzero(q))
            row[g + ", validation queries"] = share(nn, np.flatnonzero(q & val))
        if settings["kind"] != "flat":
            row["recall@10 vs exact"] = idx.record["recall_at_10"]
        rows_sim.append(row)
        say(f"{which} {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    answers = sets["finetuned"]
    pred = np.stack([answers.column(c) for c in Q1], 1)
    pred_norm = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    sim = pred_norm @ pred_norm.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1, kind="stable")[:, : o.k]
    ref: dict[str, Any] = {"embedding": "(reference: the predicted answers to Q1, cosine)", "index": "not an embedding"}
    for g, q in groups.items():
        ref[g] = share(nn, np.flatnonzero(q))
        ref[g + ", validation queries"] = share(nn, np.flatnonzero(q & val))
    rows_sim.append(ref)

    odd = (truth["Class6.1"] >= 0.5).to_numpy()
    top = max(1, round(o.top * n))
    rows_odd = [{"score": "(all galaxies: the base rate)", "embedding": "", f"odd in the top {top}": float(odd.mean())}]
    plain: dict[str, Any] = {"metric": "cosine", "pca": 0, "whiten": False, "kind": "flat"}
    pcaw: dict[str, Any] = {"metric": "cosine", "pca": 64, "whiten": True, "kind": "flat"}
    built: set[Path] = set()
    for which in ("finetuned", "imagenet"):
        emb = sets[which]
        for method, settings, label in [
            ("knn", plain, "distance to the 10th neighbour, plain cosine"),
            ("knn", {**pcaw, "whiten": False}, "distance to the 10th neighbour, PCA 64"),
            ("knn", pcaw, "distance to the 10th neighbour, PCA 64 + whitening"),
            ("knn", {**pcaw, "pca": 16}, "distance to the 10th neighbour, PCA 16 + whitening"),
            ("iforest", pcaw, "isolation forest on PCA 64 + whitening"),
            ("iforest", {**pcaw, "whiten": False}, "isolation forest on PCA 64"),
            ("lof", pcaw, "local outlier factor (k=10), PCA 64 + whitening"),
            ("lof", {**pcaw, "whiten": False}, "local outlier factor (k=10), PCA 64"),
            ("lof", plain, "local outlier factor (k=10), plain cosine"),
        ]:
            folder = o.out / "indexes" / f"odd-{which}-{settings['pca']}-{settings['whiten']}"
            idx = open_index(emb, IndexOptions(folder=folder, rebuild=folder not in built, **settings), o.progress)
            built.add(folder)
            score = scores(emb, idx, method, o.k)
            chosen = np.argsort(-score, kind="stable")[:top]
            rows_odd.append(
                {
                    "score": label,
                    "embedding": "fine-tuned body" if which == "finetuned" else "frozen ImageNet body",
                    f"odd in the top {top}": float(odd[chosen].mean()),
                }
            )
            say(f"unusual {which} {label}: {odd[chosen].mean():.3f}")
    result = {
        "similar": rows_sim,
        "unusual": rows_odd,
        "galaxies": n,
        "validation": int(val.sum()),
        **{g: int(q.sum()) for g, q in groups.items()},
        "odd": int(odd.sum()),
    }
    o.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(o.out / "similar_check.json", json.dumps(result, indent=1))
    print(table(rows_sim))
    print()
    print(table(rows_odd))
    return result


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_tool(check, CheckOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
