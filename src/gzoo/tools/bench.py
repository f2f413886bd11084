"""Where the time goes: JPEG decode, transforms, the DataLoader, the model, and all together.

    python -m gzoo.tools.bench images=DIR [model=b0] [image_size=...] [batch_size=70] [workers=2]
        [n=600] [steps=10] [rounds=2] [threads=0] [precision=32-true|bf16-mixed|16-mixed|auto]
        [channels_last=false] [out=bench.json]

``model`` is a variant of the package's conf/model (b0 ... b7, which also gives the image size)
or any timm name. Weights are random (pretrained=false): speed does not depend on them and
nothing is downloaded. ``n`` images (the folder's JPEGs, repeated if it has fewer) feed the
one-core and loader figures; their labels are random.

Every figure runs gzoo's own code, nothing rewritten for the bench. Images are read by
gzoo.data.GalaxyZooDataset and batched by gzoo.data.make_loader, as the data module builds
its loaders: the training loader with an EpochSampler (a shuffle by (seed, epoch), items
(index, epoch), so each image's augmentation is reseeded from (seed, epoch, index)), the
evaluation loader in order with the evaluation view, neither dropping a last partial batch,
workers kept between passes, memory pinned when a GPU is visible. The transforms are the
defaults of gzoo.transforms (the data config's augmentation). The model is
gzoo.net.GalaxyNet (pretrained=false, uint8 batches normalised on the device inside it, as in
training and prediction) with set_speed(channels_last=...); the train step is
gzoo.metrics.masked_mse and Adam; precision is gzoo.device.autocast's.

Each model figure times ``steps`` batches after one warm-up batch (keep steps well above
2 x workers, so the loader's prefetched batches do not flatter it). Each end-to-end figure is
measured ``rounds`` times, in turn with its model-alone figure (alone, e2e, alone, ..., alone),
and its ratio is to the mean of the model-alone figures just before and just after it, the
median over rounds: the machine's speed drifts by tens of percent over minutes here, and a
steady drift cancels this way. The e2e rounds share one loader, its workers started once, as
in training (each pass is the sampler's next epoch). The table's rates are the best of the
rounds; the JSON has every round. ``threads`` sets torch's threads for the model (0: torch's
default).

All figures come from one run on one machine, so the ratios are what count:

    decode            bare JPEG decode (gzoo.images.load_image: simplejpeg), one core: the floor
    decode PIL / cv2  the other bindings, for comparison
    train transform   a training item as a loader worker makes it (GalaxyZooDataset[(i, epoch)]:
                      reseed, decode, GalaxyWarp in its albumentations Compose, uint8 tensor;
                      brightness and normalisation happen on the device), one core; cost as a
                      multiple of decode
    reference         the same with the plain albumentations chain GalaxyWarp reproduces
                      (gzoo.tools.reference_transform, float out, normalised on the CPU)
    + GaussNoise      the train transform with albumentations.GaussNoise(p=1.0) appended (as
                      data.augment.extra appends it): what one more albumentations transform costs
    eval transform    an evaluation item (decode, central crop, resize, uint8), one core
    device aug        a training item of data.augment_on=device (decode, GalaxyWarp's draws, the
                      whole frame on; the warp runs on the device), one core
    crop cache        the same read from data.crop_cache (a memory-mapped row, no decode), one core;
                      + CPU warp: a cached frame through the train transform
    device warp       gzoo.device_augment.warp_batch (one grid_sample per batch) on the bench's device
    loader            the training loader with ``workers`` processes, copied to the device
    model forward     the model alone, inference, on a uint8 batch already on the device
    model train       the model alone, forward + backward + Adam step
    train e2e         training with the training loader, as a fraction of model train (see above)
    predict e2e       inference with the evaluation loader, as a fraction of model forward
    ... waiting       the share of an e2e figure's time its loop waited for the loader's next
                      batch (on a GPU the device may still be busy meanwhile)

On a GPU the timings synchronise the device.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import albumentations
import cv2
import numpy as np
import simplejpeg
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from gzoo import schema
from gzoo.config import REQUIRED, option, run_tool
from gzoo.data.crop_cache import CachedImages, open_cache
from gzoo.data.dataset import EpochSampler, GalaxyZooDataset
from gzoo.data.loader import make_loader
from gzoo.device import PRECISIONS, autocast, resolve_device, resolve_precision
from gzoo.device_augment import device_train_transform, warp_batch, warp_on_device
from gzoo.errors import GzooError
from gzoo.images import load_image
from gzoo.log import say
from gzoo.metrics import masked_mse
from gzoo.net import GalaxyNet, backbone_norm
from gzoo.optim import check as check_optim
from gzoo.options import DataOptions
from gzoo.tools.reference_transform import reference_train_transform
from gzoo.train import CONF
from gzoo.transforms import eval_transform, train_transform

MODEL_CONF = CONF / "model"
SEED = 0  # the augmentation's and the shuffle's seed, as a run's seed
LR = float(check_optim({})["lr"])  # optim=paper's lr (gzoo/options.py; a finetune without the feature cache)


@dataclass
class BenchOptions:
    images: Path = option(REQUIRED, "a folder of JPEGs (repeated if it holds fewer than n)")
    model: str = option("b0", "a variant of conf/model (b0 ... b7, which gives the image size) or any timm name")
    image_size: int | None = option(None, "pixels per side (default: the variant's, or 224 for a timm name)", low=8)
    batch_size: int = option(DataOptions.batch_size, "images per batch (the recipe's)", low=1)
    workers: int = option(2, "DataLoader worker processes", low=0)
    n: int = option(600, "images for the one-core and loader figures", low=1)
    steps: int = option(10, "batches timed per model figure, after one warm-up batch", low=1)
    rounds: int = option(2, "times each end-to-end figure is measured, between model-alone figures", low=1)
    threads: int = option(0, "torch threads for the model (0: torch's default)", low=0)
    precision: str = option("32-true", "the model's precision (auto = bf16-mixed on a GPU that has it, else 32-true)", choices=PRECISIONS)
    channels_last: bool = option(False, "NHWC weights (GalaxyNet.set_speed)")
    out: Path = option(Path("bench.json"), "the JSON report to write (every figure, every round, device and versions)")


def resolve_model(model: str, image_size: int | None) -> tuple[str, int]:
    """(timm name, image size) for a conf/model variant or a timm name."""
    variant = MODEL_CONF / f"{model}.yaml"
    if not model.startswith("_") and variant.is_file():
        cfg = OmegaConf.load(variant)
        return cfg.timm_name, image_size or cfg.image_size
    if timm.is_model(model.split(".")[0]):
        return model, image_size or 224
    raise GzooError(f"model={model!r} is neither a variant in {MODEL_CONF} (b0 ... b7) nor a timm model.")


def list_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` JPEG paths from ``folder``, repeating its files if it has fewer."""
    if not folder.is_dir():
        raise GzooError(f"images={folder} is not a folder; point it at a folder of JPEGs.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        raise GzooError(f"images={folder} holds no .jpg files.")
    return list(itertools.islice(itertools.cycle(paths), n))


def rates(fns: dict[str, Callable[[int], object]], n: int, rounds: int = 5) -> dict[str, float]:
    """Items per CPU second of each function over the indices ``0 .. n-1``, best of ``rounds``.

    CPU time of this process, not wall time, and the functions take turns round by
    round, so other work on the machine disturbs neither the figures nor their ratios much.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.process_time()
            for i in range(n):
                fn(i)
            best[name] = min(best[name], time.process_time() - start)
    return {name: n / max(t, 1e-9) for name, t in best.items()}


def ratios_to_neighbours(e2e: list[float], alone: list[float]) -> list[float]:
    """Each ``e2e[i]`` as a fraction of the mean of ``alone[i]`` and ``alone[i + 1]``, the figures
    measured just before and just after it: a steady drift of the machine's speed cancels."""
    if len(alone) != len(e2e) + 1:
        raise ValueError(f"need one more alone figure than e2e figures, got {len(alone)} and {len(e2e)}")
    return [e / ((a + b) / 2) for e, a, b in zip(e2e, alone, alone[1:])]


def decode_pil(path: Path) -> np.ndarray:
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        return np.asarray(im.convert("RGB"))


def decode_cv2(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # type: ignore[arg-type]  # None (not an image) fails in cvtColor


# ----------------------------------------------------------------------------- the data path


def cached(paths: list[Path], folder: Path, workers: int = 0) -> CachedImages:
    """``paths`` (repeats allowed) from a crop cache of their distinct files built in ``folder``."""
    distinct = sorted(set(paths))
    row = {p: i for i, p in enumerate(distinct)}
    return open_cache(distinct, folder, workers, progress=False).subset([row[p] for p in paths])


def dataset(paths: list[Path] | CachedImages, transform) -> GalaxyZooDataset:
    """The images with random labels, read as every gzoo loader reads them."""
    labels = np.random.default_rng(0).random((len(paths), schema.NUM_ANSWERS))
    return GalaxyZooDataset(paths, labels, np.arange(len(paths)), transform, seed=SEED)


def train_loader(paths: list[Path], transform, batch_size: int, workers: int) -> DataLoader:
    """As the data module's training loader: shuffled by EpochSampler, each image's draws from (seed, epoch, index)."""
    return make_loader(dataset(paths, transform), batch_size, workers, sampler=EpochSampler(len(paths), SEED, epoch=0))


def eval_loader(paths: list[Path], transform, batch_size: int, workers: int) -> DataLoader:
    """As the data module's validation loader: the evaluation view, in order."""
    return make_loader(dataset(paths, transform), batch_size, workers)


def one_core(paths: list[Path], size: int, mean, std, cache: CachedImages) -> dict[str, float]:
    """Decode and per-item rates on one core, and each item's cost as a multiple of a decode."""
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        train = {  # training items, (index, epoch): reseeded per image as the training loader does it
            "train_transform": dataset(paths, train_transform(size)),
            "train_transform_gauss_noise": dataset(paths, train_transform(size, extra=[albumentations.GaussNoise(p=1.0)])),
            "reference_transform": dataset(paths, reference_train_transform(size, mean, std)),
            "device_augment": dataset(paths, device_train_transform(size)),  # decode and draw: the warp is the device's
            "crop_cache": dataset(cache, device_train_transform(size)),  # read and draw: no decode, no warp here
            "crop_cache_cpu_warp": dataset(cache, train_transform(size)),
        }
        evaluation = {"eval_transform": dataset(paths, eval_transform(size))}
        fns: dict[str, Callable[[int], object]] = {
            "decode": lambda i: load_image(paths[i]),
            "decode_pil": lambda i: decode_pil(paths[i]),
            "decode_cv2": lambda i: decode_cv2(paths[i]),
        }
        fns.update({name: (lambda i, ds=ds: ds[(i, 0)]) for name, ds in train.items()})  # type: ignore[misc]  # mypy cannot type a lambda's default argument
        fns.update({name: (lambda i, ds=ds: ds[i]) for name, ds in evaluation.items()})  # type: ignore[misc]
        for fn in fns.values():  # warm up: first calls allocate
            fn(0)
        out = {f"{name}_img_s": r for name, r in rates(fns, len(paths)).items()}
        for name in (*train, *evaluation):
            out[f"{name}_cost_x_decode"] = out["decode_img_s"] / out[f"{name}_img_s"]
        return out
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])


def loader_img_s(loader: DataLoader, device: torch.device) -> float:
    """Images per second from the loader after its first batch, copied to the device as training would."""
    batches = iter(loader)
    next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        batch["image"].to(device, non_blocking=True)
        count += len(batch["image"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / max(time.perf_counter() - start, 1e-9)


def device_warp_img_s(paths: list[Path], size: int, device: torch.device, batch_size: int, steps: int) -> float:
    """Frames per second through warp_batch (data.augment_on=device's warp) on ``device``, a batch at a time."""
    ds = dataset(paths[:batch_size], device_train_transform(size))
    items = [ds[(i, 0)] for i in range(len(ds))]
    frames = torch.stack([it["image"] for it in items]).to(device)
    theta = torch.stack([it["warp"] for it in items]).to(device)
    warp_batch(frames, theta, size)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        warp_batch(frames, theta, size)
    sync(device)
    return steps * len(items) / max(time.perf_counter() - start, 1e-9)


# ----------------------------------------------------------------------------- the model


class Runner:
    """GalaxyNet on the device with one training step and one forward pass, timed with the device synchronised."""

    def __init__(self, timm_name: str, size: int, device: torch.device, precision: str, channels_last: bool):
        self.device, self.precision = device, precision
        self.net = GalaxyNet(timm_name, pretrained=False, image_size=size).to(device).set_speed(channels_last=channels_last)
        self.optimizer = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=LR)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def to_device(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch's tensors on the device, as Lightning moves them."""
        return {k: batch[k].to(self.device, non_blocking=True) for k in ("image", "target", "mask", "brightness", "warp") if k in batch}

    def train_step(self, batch: dict) -> None:
        self.net.train()
        b = warp_on_device(self.to_device(batch), self.net.image_size, self.net.crop_fraction)  # as GalaxyZooModule does (augment_on=device)
        with autocast(self.device, self.precision):
            loss = masked_mse(self.net(b["image"], b.get("brightness")), b["target"], b["mask"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.inference_mode()
    def forward(self, batch: dict) -> None:
        self.net.eval()
        x = batch["image"].to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            self.net(x).cpu()  # the predictions leave the device, as in prediction

    def rate(self, step: Callable[[dict], None], batches: Iterable[dict]) -> tuple[float, float, float]:
        """Images and steps per second over ``batches`` after the first, which warms up (and starts the
        loader's workers), and the share of that time the loop spent waiting for the next batch."""
        batches = iter(batches)
        step(next(batches))
        self.sync()
        start, waited, steps, images = time.perf_counter(), 0.0, 0, 0
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - t
            if batch is None:
                break
            step(batch)
            steps += 1
            images += len(batch["image"])
        self.sync()
        elapsed = max(time.perf_counter() - start, 1e-9)
        return images / elapsed, steps / elapsed, waited / elapsed


# ----------------------------------------------------------------------------- the report


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores available"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "timm": timm.__version__,
        "albumentations": albumentations.__version__,
        "opencv": cv2.__version__,
        "simplejpeg": simplejpeg.__version__,
        "pillow": Image.__version__,
        "numpy": np.__version__,
    }


COST = "img/s on 1 core; ratio: cost in decodes"
ROWS = [  # (label, value key, ratio key, unit and meaning of the ratio)
    ("decode (load_image: simplejpeg)", "decode_img_s", None, "img/s on 1 core"),
    ("decode (PIL)", "decode_pil_img_s", None, "img/s on 1 core"),
    ("decode (cv2.imdecode)", "decode_cv2_img_s", None, "img/s on 1 core"),
    ("train transform (decode + augment)", "train_transform_img_s", "train_transform_cost_x_decode", COST),
    ("  albumentations reference", "reference_transform_img_s", "reference_transform_cost_x_decode", COST),
    ("train transform + GaussNoise extra", "train_transform_gauss_noise_img_s", "train_transform_gauss_noise_cost_x_decode", COST),
    ("eval transform (decode + crop/resize)", "eval_transform_img_s", "eval_transform_cost_x_decode", COST),
    ("device aug (decode + draw; warp on device)", "device_augment_img_s", "device_augment_cost_x_decode", COST),
    ("crop cache (read + draw; warp on device)", "crop_cache_img_s", "crop_cache_cost_x_decode", COST),
    ("crop cache + CPU warp", "crop_cache_cpu_warp_img_s", "crop_cache_cpu_warp_cost_x_decode", COST),
    ("device warp (grid_sample, batched)", "device_warp_img_s", None, "img/s on the model's device"),
    ("loader, train transform", "loader_img_s", None, "img/s with {workers} workers"),
    ("model alone, forward", "model_forward_img_s", None, "img/s"),
    ("model alone, train step", "model_train_img_s", None, "img/s"),
    ("predict e2e (eval loader + forward)", "predict_e2e_img_s", "predict_e2e_fraction", "img/s; ratio: of model forward (median of rounds)"),
    ("train e2e (train loader + step)", "train_e2e_img_s", "train_e2e_fraction", "img/s; ratio: of model train step (median of rounds)"),
    ("train e2e", "train_e2e_steps_s", None, "steps/s"),
    ("predict e2e: loop waiting for data", "predict_e2e_wait_fraction", None, "share of its time"),
    ("train e2e: loop waiting for data", "train_e2e_wait_fraction", None, "share of its time"),
]


def table(results: dict[str, float], workers: int) -> str:
    lines = [f"{'measurement':<40}{'value':>10}{'ratio':>8}  unit", "-" * 100]
    for label, value, ratio, unit in ROWS:
        r = f"{results[ratio]:.2f}" if ratio else ""
        lines.append(f"{label:<40}{results[value]:>10.2f}{r:>8}  {unit.format(workers=workers)}")
    return "\n".join(lines)


def bench(o: BenchOptions) -> dict:
    """Run every measurement, print the table, write ``o.out``; returns what was written."""
    timm_name, size = resolve_model(o.model, o.image_size)
    mean, std = backbone_norm(timm_name)  # type: ignore[misc]  # conf/model variants are timm names (not hf_hub:), so never None; for the reference chain only: GalaxyNet normalises on its own
    paths = list_jpegs(o.images, o.n)
    device = resolve_device("auto")
    precision = resolve_precision(o.precision, device)
    if o.threads:
        torch.set_num_threads(o.threads)
    settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()}, "timm_name": timm_name, "image_size": size}
    settings.update(n=len(paths), threads=torch.get_num_threads(), precision=precision)
    load = os.getloadavg()[0]  # other work on the machine disturbs the wall-clock figures: say how much there was
    say(f"bench of {timm_name} at {size} px, batch {o.batch_size}, {o.workers} workers, {precision}, on {describe_device(device)}; load {load:.1f}")

    with tempfile.TemporaryDirectory(prefix="gzoo-bench-cache-") as folder:  # the crop cache of the bench's images
        results: dict[str, Any] = one_core(paths, size, mean, std, cached(paths, Path(folder), o.workers))
    results["device_warp_img_s"] = device_warp_img_s(paths, size, device, o.batch_size, o.steps)
    train_tf, eval_tf = train_transform(size), eval_transform(size)
    results["loader_img_s"] = loader_img_s(train_loader(paths, train_tf, o.batch_size, o.workers), device)

    runner = Runner(timm_name, size, device, precision, o.channels_last)
    step_paths = list(itertools.islice(itertools.cycle(paths), o.batch_size * (o.steps + 1)))
    # The model-alone batch waits on the device; a training batch, so it carries brightness too.
    fixed = runner.to_device(next(iter(train_loader(step_paths[: o.batch_size], train_tf, o.batch_size, 0))))
    repeat = [fixed] * (o.steps + 1)
    pairs = {  # e2e name: (alone name, step, where the e2e batches come from)
        "predict_e2e": ("model_forward", runner.forward, lambda: eval_loader(step_paths, eval_tf, o.batch_size, o.workers)),
        "train_e2e": ("model_train", runner.train_step, lambda: train_loader(step_paths, train_tf, o.batch_size, o.workers)),
    }
    for e2e, (alone, step, make) in pairs.items():
        loader = make()  # one loader for every round, its workers started once, as in a training run
        alone_rates, e2e_rates, e2e_steps, waits = [], [], [], []
        for r in range(o.rounds + 1):  # alone, e2e, alone, ..., alone: each e2e figure has an alone figure on either side
            alone_rates.append(runner.rate(step, repeat)[0])
            if r < o.rounds:
                rate, steps_s, wait = runner.rate(step, loader)
                e2e_rates.append(rate)
                e2e_steps.append(steps_s)
                waits.append(wait)
        del loader  # its workers stop
        ratios = ratios_to_neighbours(e2e_rates, alone_rates)
        results[f"{alone}_img_s_per_round"], results[f"{e2e}_img_s_per_round"] = alone_rates, e2e_rates
        results[f"{alone}_img_s"], results[f"{e2e}_img_s"] = max(alone_rates), max(e2e_rates)
        results[f"{e2e}_fraction"] = float(np.median(ratios))
        results[f"{e2e}_fraction_per_round"] = ratios
        results[f"{e2e}_wait_fraction"] = max(waits)
        if e2e == "train_e2e":
            results["train_e2e_steps_s"] = max(e2e_steps)

    say(f"where the time goes:\n{table(results, o.workers)}")
    settings["load_average"] = [load, os.getloadavg()[0]]  # 1-minute load at the start and at the end
    report = {"device": describe_device(device), "versions": versions(), "settings": settings, "results": results}
    o.out.parent.mkdir(parents=True, exist_ok=True)
    o.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {o.out}")
    return report


def main(argv: list[str] | None = None) -> int:
    return run_tool(bench, BenchOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
