"""Survey-scale prediction at two sizes, side by side: rows/s and peak memory should not depend on the catalogue's size.

    python -m gzoo.tools.survey_bench ckpt=CKPT images=DIR sizes=[5000,50000] repeats=2 out=outputs/survey_bench

Makes a catalogue of each size from the images in DIR, repeated under new ids (each row its own
symbolic link, so every row is a file of its own), then runs ``python -m gzoo.predict`` on each, in turn
(A B A B ...), each time into a new folder of parts, and reads each run's wall time and peak resident
memory (the largest process of the run, from the operating system's own accounting: os.wait4). It also
times the network alone on decoded batches, so the end-to-end rate can be read as a share of it. Prints
one table (medians over the repeats, and each size's ratio to the first) and writes it to out/bench.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gzoo.config import REQUIRED, option, run_tool
from gzoo.images import IMAGE_SUFFIXES, image_suffix
from gzoo.io import atomic_write_text
from gzoo.log import say


@dataclass
class SurveyBenchOptions:
    ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train (a tiny model measures the data path, not the network)")
    images: Path = option(REQUIRED, "a folder of images to repeat under new ids")
    out: Path = option(Path("outputs/survey_bench"), "where the catalogues, the runs' parts and bench.json go (the parts are removed after each run)")
    sizes: list[int] = option([5000, 50000], "catalogue sizes, in rows", low=1)
    repeats: int = option(2, "runs of each size (A B A B ...)", low=1)
    part_size: int = option(10000, "predict's part_size", low=1)
    batch_size: int = option(32, "predict's batch_size", low=1)
    num_workers: int = option(2, "predict's num_workers", low=0)


def make_catalog(images: Path, rows: int, folder: Path) -> Path:
    """A Parquet catalogue of ``rows`` galaxies: links/<k>.<ext> -> the images of ``images`` in turn, ra and dec."""
    sources = sorted(p for p in images.iterdir() if image_suffix(p) is not None)
    if not sources:
        raise SystemExit(f"{images} holds no images ({' '.join(IMAGE_SUFFIXES)})")
    links = folder / "links"
    links.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(rows):
        source = sources[k % len(sources)]
        link = links / f"{k}{source.suffix}"
        if not link.is_symlink():
            link.symlink_to(source.absolute())
        files.append(f"links/{link.name}")
    table = pd.DataFrame({"id_str": [f"G{k:08d}" for k in range(rows)], "file_loc": files, "ra": np.linspace(0, 360, rows, endpoint=False), "dec": 0.0})
    path = folder / f"catalog-{rows}.parquet"
    table.to_parquet(path, index=False)
    return path


def timed_run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB of the run's largest process) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else status}")
    return wall, usage.ru_maxrss / 1024


def model_alone(ckpt: Path, batch_size: int, seconds: float = 5.0) -> float:
    """Images per second of the network alone (GalaxyNet on uint8 batches at its own size, on the CPU)."""
    from gzoo.module import load_net

    net = load_net(ckpt, "cpu").set_speed(channels_last=True)
    x = torch.randint(0, 256, (batch_size, 3, net.image_size, net.image_size), dtype=torch.uint8)
    with torch.no_grad():
        net(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            done += batch_size
    return done / (time.perf_counter() - start)


def bench(o: SurveyBenchOptions) -> dict:
    o.out.mkdir(parents=True, exist_ok=True)
    catalogs = {n: make_catalog(o.images, n, o.out) for n in o.sizes}
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in o.sizes}
    for r in range(o.repeats):
        for n in o.sizes:
            parts = o.out / f"parts-{n}"
            shutil.rmtree(parts, ignore_errors=True)
            args = [
                sys.executable,
                "-m",
                "gzoo.predict",
                f"ckpt={o.ckpt}",
                f"images={catalogs[n]}",
                f"out={parts}/",
                "carry=[ra,dec]",
                "device=cpu",
                "progress=false",
            ]
            args += [f"part_size={o.part_size}", f"batch_size={o.batch_size}", f"num_workers={o.num_workers}"]
            wall, peak = timed_run(args)
            runs[n].append((wall, peak))
            say(f"run {r + 1}/{o.repeats}, {n} rows: {wall:.1f} s, {n / wall:.1f} rows/s, peak {peak:.0f} MB")
            if r == o.repeats - 1 and n == o.sizes[-1]:
                assert len(pd.read_parquet(parts, columns=["id_str"])) == n
            shutil.rmtree(parts, ignore_errors=True)
    alone = model_alone(o.ckpt, o.batch_size)
    first = o.sizes[0]
    rows = []
    for n in o.sizes:
        walls, peaks = np.array(runs[n]).T
        rate, peak = float(np.median(n / walls)), float(np.median(peaks))
        rows.append({"rows": n, "rows_per_s": rate, "peak_mb": peak, "of_model_alone": rate / alone})
    for row in rows:
        row["rate_ratio"], row["peak_ratio"] = row["rows_per_s"] / rows[0]["rows_per_s"], row["peak_mb"] / rows[0]["peak_mb"]
    print(f"{'rows':>8} {'rows/s':>9} {'peak MB':>9} {'rate/' + str(first):>11} {'peak/' + str(first):>11} {'of model alone':>15}")
    for row in rows:
        print(
            f"{row['rows']:>8} {row['rows_per_s']:>9.1f} {row['peak_mb']:>9.0f} {row['rate_ratio']:>11.3f} {row['peak_ratio']:>11.3f} {row['of_model_alone']:>15.3f}"
        )
    result = {
        "model_alone_img_s": alone,
        "repeats": o.repeats,
        "part_size": o.part_size,
        "num_workers": o.num_workers,
        "sizes": rows,
        "runs": {str(k): v for k, v in runs.items()},
    }
    atomic_write_text(o.out / "bench.json", json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    return run_tool(bench, SurveyBenchOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
