"""One prepared check of the GPU path, in one table: ``make gpu-check`` (under 6 minutes on one GPU).

    python -m gzoo.tools.gpu_check [out=outputs/gpu_check] [models=[b0,b4]] [batch_size=128] [workers=8]
        [n=2048] [steps=20] [compile=[false,true]] [train_steps=300] [dry_run=null]

For each variant (b0 at 224 px, b4 at 380 px: tf_efficientnet_b0.in1k / _b4.in1k, pretrained=false,
so nothing is downloaded), in bf16-mixed with channels_last, without and with torch.compile of the
body, it measures on synthetic galaxies (gzoo.synth, 424 px as Kaggle's):

    alone         model-alone training (forward + backward + Adam) on one batch already on the device
    cpu/device/cache
                  end-to-end training with each input path, as a fraction of alone and the share of
                  the loop's time spent waiting for the next batch: cpu = loader workers decode and
                  warp (data.augment_on=cpu); device = workers decode, the warp runs on the GPU
                  (data.augment_on=device); cache = workers read data.crop_cache, the warp on the GPU
    predict       inference with the evaluation loader (gzoo.inference.predict_loader), tta=1 and tta=8
    peak GB       torch.cuda.max_memory_allocated over the variant's figures

then one short real training run, both phases through gzoo.train.train (b0 from scratch on the same
galaxies, trainer=gpu speed=gpu, about ``train_steps`` steps in all), which must write its
checkpoints, and the survey path with its checkpoint: the galaxies as a catalogue, predicted by
gzoo.survey.run in two shards (shard=0/2, 1/2) into a folder of four parts, whose union must be every
galaxy once, with its rate end to end as a fraction of the network alone on batches already on the
device. Every figure runs gzoo's own code (gzoo.tools.bench's Runner, loaders and timing).

Without a GPU (or with dry_run=true) it is a dry run of every step on the CPU at tiny sizes (timm's
test_efficientnet at 32 px, a few galaxies, two steps per figure, 32-true, compile with the eager
backend), which CI runs: it shows the check works, not how fast anything is.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gzoo.config import option, run_tool
from gzoo.data.crop_cache import open_cache
from gzoo.data.loader import make_loader
from gzoo.device_augment import device_train_transform
from gzoo.errors import GzooError
from gzoo.inference import image_dataset, predict_loader
from gzoo.io import atomic_write_text
from gzoo.log import say
from gzoo.options import DataOptions
from gzoo.tools.bench import Runner, describe_device, resolve_model, train_loader, versions
from gzoo.transforms import train_transform

PRECISION = "bf16-mixed"  # the GPU figures' (the CPU dry run: 32-true, as CPU training runs)
PATHS = ("cpu", "device", "cache")  # the input paths, see the docstring
DRY: dict[str, Any] = {"model": ("test_efficientnet", 32), "batch_size": 4, "n": 16, "steps": 2, "train_epochs": 1}


@dataclass
class GpuCheckOptions:
    out: Path = option(Path("outputs/gpu_check"), "folder for the synthetic galaxies, the crop cache, the training run and gpu_check.json")
    models: list[str] = option(["b0", "b4"], "variants of conf/model, each at its own image size")
    batch_size: int = option(128, "images per training and prediction batch", low=1)
    workers: int = option(8, "DataLoader worker processes", low=0)
    n: int = option(2048, "synthetic galaxies (424 px) for the figures and the training run", low=8)
    steps: int = option(20, "batches timed per figure, after one warm-up batch", low=1)
    compile: list[bool] = option([False, True], "measure without and/or with torch.compile of the body")
    train_steps: int = option(300, "steps of the real training run, both phases together", low=2)
    dry_run: bool | None = option(None, "true: tiny CPU figures; null: a dry run only where no GPU is visible")


@dataclass
class Plan:
    """What one run of the check does, after the dry-run choice."""

    dry: bool
    device: torch.device
    models: list[tuple[str, str, int]]  # (label, timm name, image size)
    batch_size: int
    n: int
    steps: int
    workers: int
    compile_backend: str
    precision: str


def plan(o: GpuCheckOptions) -> Plan:
    gpu = torch.cuda.is_available()
    dry = (not gpu) if o.dry_run is None else o.dry_run
    if not dry and not gpu:
        raise GzooError("dry_run=false, but no GPU is visible; run on a machine with a CUDA GPU, or with dry_run=true (or null) for the CPU dry run.")
    models = [(m, *resolve_model(m, None)) for m in o.models]
    if dry:
        models = [(f"{label} (dry: {DRY['model'][0]}@{DRY['model'][1]})", *DRY["model"]) for label, _, _ in models]
        return Plan(True, torch.device("cpu"), models, DRY["batch_size"], DRY["n"], DRY["steps"], min(o.workers, 1), "eager", "32-true")
    return Plan(
        False,
        torch.device("cuda"),
        [(f"{label}@{size}", name, size) for label, name, size in models],
        o.batch_size,
        o.n,
        o.steps,
        o.workers,
        "inductor",
        PRECISION,
    )


def synthetic(out: Path, n: int, workers: int) -> Path:
    """The synthetic galaxies (Kaggle layout, 424 px), made once in ``out``."""
    from gzoo.synth import generate

    return generate(out, n_train=n, n_test=0, seed=0, progress=False, workers=max(workers, 1))


def measure(p: Plan, label: str, timm_name: str, size: int, compiled: bool, paths: list[Path], cache) -> dict:
    """Every figure of one variant with or without compile."""
    if p.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(p.device)
    start = time.perf_counter()
    runner = Runner(timm_name, size, p.device, p.precision, channels_last=True)
    if compiled:
        runner.net.body.compile(backend=p.compile_backend)  # as GalaxyNet.set_speed(compile=True), the backend chosen for a dry run
    count = p.batch_size * (p.steps + 1)
    step_paths = list(itertools.islice(itertools.cycle(paths), count))
    step_cache = cache.subset([i % len(cache) for i in range(count)])
    fixed = runner.to_device(next(iter(train_loader(step_paths[: p.batch_size], train_transform(size), p.batch_size, 0))))
    alone = runner.rate(runner.train_step, [fixed] * (p.steps + 1))[0]
    row = {"model": label, "timm_name": timm_name, "image_size": size, "compile": compiled, "alone_img_s": alone}
    sources = {
        "cpu": (step_paths, train_transform(size)),
        "device": (step_paths, device_train_transform(size)),
        "cache": (step_cache, device_train_transform(size)),
    }
    for name, (images, tf) in sources.items():
        rate, _, wait = runner.rate(runner.train_step, train_loader(images, tf, p.batch_size, p.workers))
        row.update({f"{name}_img_s": rate, f"{name}_x_alone": rate / alone, f"{name}_wait": wait})
    for tta in (1, 8):
        loader = make_loader(image_dataset(runner.net, step_paths, range(count), tta), p.batch_size, p.workers)
        row[f"predict_tta{tta}_img_s"] = runner.rate(lambda batch: None, predict_loader(runner.net, loader, tta, p.precision))[0]
    row["peak_gb"] = torch.cuda.max_memory_allocated(p.device) / 1e9 if p.device.type == "cuda" else None
    row["seconds"] = time.perf_counter() - start
    return row


def training_run(p: Plan, o: GpuCheckOptions, data: Path) -> dict:
    """Both phases of b0 through gzoo.train.train on the synthetic galaxies; checks their checkpoints."""
    from hydra import compose, initialize_config_dir

    from gzoo.train import CONF, train

    start = time.perf_counter()
    runs = o.out / "runs"
    if p.dry:
        args = ["debug=tiny", "data.num_workers=0"]
        epochs = DRY["train_epochs"]
    else:
        batch = DataOptions.batch_size  # the recipe's batch
        per_epoch = math.ceil(p.n * 0.85 / batch)
        epochs = max(1, math.ceil(o.train_steps / 2 / per_epoch))
        args = ["trainer=gpu", "speed=gpu", "model=b0", "model.pretrained=false", f"data.batch_size={batch}", f"data.num_workers={p.workers}"]
    common = [
        *args,
        f"data.root={data}",
        f"paths.output_root={runs}",
        "name=gpu_check",
        "overwrite=true",
        f"trainer.max_epochs={epochs}",
        "callbacks.progress_bar=null",
    ]
    out: dict[str, Any] = {}
    for phase in ("finetune", "fulltune"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*common, f"phase={phase}"])
        metrics = train(cfg)
        ckpts = Path(cfg.run_dir) / "checkpoints"
        missing = [c for c in ("best.ckpt", "last.ckpt") if not (ckpts / c).is_file()]
        if missing:
            raise GzooError(f"gpu check: the {phase} run wrote no {' and no '.join(missing)} in {ckpts}.")
        last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
        out[phase] = {"val_rmse": metrics["val/rmse"], "epochs": metrics["epochs"], "steps": int(last["global_step"]), "checkpoints": str(ckpts)}
    out["seconds"] = time.perf_counter() - start
    return out


def sharded_prediction(p: Plan, o: GpuCheckOptions, paths: list[Path], ckpt: Path) -> dict:
    """gzoo.survey over the galaxies as a catalogue, in two shards of four parts: parts written, and the rate
    end to end as a fraction of the network alone (forward passes of one batch already on the device)."""
    import shutil

    import pandas as pd

    from gzoo.module import load_net
    from gzoo.survey import PART, SurveyOptions, run

    catalog, out = o.out / "survey_catalog.parquet", o.out / "survey_parts"
    pd.DataFrame({"id_str": [q.stem for q in paths], "file_loc": [str(q) for q in paths]}).to_parquet(catalog, index=False)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    for i in range(2):
        shard = SurveyOptions(ckpt=ckpt, images=catalog, out=f"{out}/", shard=f"{i}/2", device=p.device.type, progress=False, precision=p.precision)
        shard.part_size, shard.batch_size, shard.num_workers = math.ceil(len(paths) / 4), p.batch_size, p.workers
        run(shard)
    seconds = time.perf_counter() - start
    table = pd.read_parquet(out)
    if sorted(map(str, table["id_str"])) != sorted(q.stem for q in paths):  # all-digit ids are read as integers
        raise GzooError(f"gpu check: the shards' parts in {out} do not hold every galaxy once.")
    net = load_net(ckpt, p.device.type).set_speed(channels_last=True)
    x = torch.randint(0, 256, (p.batch_size, 3, net.image_size, net.image_size), dtype=torch.uint8, device=p.device)
    from gzoo.device import autocast

    with torch.no_grad(), autocast(p.device, p.precision):
        net(x)
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
        begin = time.perf_counter()
        for _ in range(p.steps):
            net(x)
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
    alone = p.steps * p.batch_size / (time.perf_counter() - begin)
    rate = len(table) / seconds
    parts = sum(1 for q in out.iterdir() if PART.fullmatch(q.name))
    return {"rows": len(table), "parts": parts, "shards": 2, "img_s": rate, "alone_img_s": alone, "x_alone": rate / alone, "seconds": seconds}


def table(rows: list[dict], run: dict) -> str:
    head = f"{'model':<34}{'compile':>8}{'alone':>9}" + "".join(f"{k + ' (x, wait)':>24}" for k in PATHS) + f"{'predict':>9}{'tta8':>8}{'peak GB':>9}{'s':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        paths = "".join(f"{r[f'{k}_img_s']:>9.0f} {r[f'{k}_x_alone']:>5.2f}x {100 * r[f'{k}_wait']:>5.1f}%" + " " * 1 for k in PATHS)
        peak = "n/a" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        lines.append(
            f"{r['model']:<34}{'on' if r['compile'] else 'off':>8}{r['alone_img_s']:>9.0f}{paths}"
            f"{r['predict_tta1_img_s']:>9.0f}{r['predict_tta8_img_s']:>8.0f}{peak:>9}{r['seconds']:>6.0f}"
        )
    lines.append("img/s of training (alone, and end to end with each input path: rate, fraction of alone, share of time waiting for data) and of prediction")
    for phase in ("finetune", "fulltune"):
        f = run[phase]
        lines.append(f"training run, {phase}: {f['steps']} steps, {f['epochs']} epochs, val/rmse {f['val_rmse']:.4f}, checkpoints in {f['checkpoints']}")
    if "survey" in run:
        v = run["survey"]
        lines.append(
            f"sharded prediction (gzoo.survey, fulltune checkpoint): {v['rows']} galaxies in {v['parts']} parts over {v['shards']} shards, "
            f"{v['img_s']:.0f} img/s end to end = {v['x_alone']:.2f}x the network alone ({v['alone_img_s']:.0f} img/s; includes each shard's start)"
        )
    return "\n".join(lines)


def gpu_check(o: GpuCheckOptions) -> dict:
    """Run every figure and the training run, print the table, write out/gpu_check.json; returns the report."""
    start = time.perf_counter()
    p = plan(o)
    say(f"gpu check{' (CPU dry run: no GPU, tiny sizes)' if p.dry else ''} on {describe_device(p.device)}; writing under {o.out}")
    threads = torch.get_num_threads()
    if p.dry:  # tiny tensors: more threads only spin against each other (15x slower on 2 busy cores)
        torch.set_num_threads(1)
    try:
        data = synthetic(o.out / "synthetic", p.n, p.workers)
        paths = sorted((data / "images_training_rev1").glob("*.jpg"))
        cache = open_cache(paths, o.out / "crop_cache", p.workers, progress=False)
        rows = [measure(p, label, name, size, c, paths, cache) for label, name, size in p.models for c in o.compile]
        run = training_run(p, o, data)
        run["survey"] = sharded_prediction(p, o, paths, Path(run["fulltune"]["checkpoints"]) / "best.ckpt")
    finally:
        torch.set_num_threads(threads)
    report = {
        "device": describe_device(p.device),
        "dry_run": p.dry,
        "versions": versions(),
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()}, "precision": p.precision, "channels_last": True},
        "rows": rows,
        "training_run": run,
        "seconds": time.perf_counter() - start,
    }
    say(f"gpu check, {report['seconds']:.0f} s:\n{table(rows, run)}")
    atomic_write_text(o.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    say(f"wrote {o.out / 'gpu_check.json'}")
    return report


def main(argv: list[str] | None = None) -> int:
    return run_tool(gpu_check, GpuCheckOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
