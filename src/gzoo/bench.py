"""Where the time goes: JPEG decode, transforms, the DataLoader, the model, and all together.

    python -m gzoo.bench images=DIR [model=b0] [image_size=...] [batch_size=70] [workers=2]
        [n=600] [steps=10] [rounds=2] [threads=0] [precision=32|bf16-mixed]
        [channels_last=false] [out=bench.json]

``model`` is a variant of conf/model (b0 ... b7, which also gives the image size) or any
timm name. Weights are random (pretrained=false): speed does not depend on them and
nothing is downloaded. ``n`` images (the folder's JPEGs, repeated if it has fewer) feed
the one-core and loader figures. Each model figure times ``steps`` batches after one
warm-up batch (keep steps well above 2 x workers, so the loader's prefetched batches do
not flatter it). Each end-to-end figure is measured ``rounds`` times, in turn with its
model-alone figure (alone, e2e, alone, ..., alone), and its ratio is to the mean of the
model-alone figures just before and just after it, the median over rounds: the machine's
speed drifts by tens of percent over minutes here, and a steady drift cancels this way.
The e2e rounds share one loader, its workers started once, as in training. The table's
rates are the best of the rounds; the JSON has every round.
``threads`` sets torch's threads for the model (0: torch's default).

All figures come from one run on one machine, so the ratios are what count:

    decode            bare JPEG decode (gzoo.data.load_rgb), one core: the floor
    decode PIL / cv2  the other bindings, for comparison
    train transform   decode + the training augmentation with uint8 output, as training runs it
                      (brightness and normalisation happen on the device), one core; cost as a
                      multiple of decode; also with float output normalised on the CPU, for comparison
    reference         the same with the plain albumentations chain it reproduces (float out)
    eval transform    decode + crop, resize, uint8 out, one core
    loader            the training DataLoader with ``workers`` processes (uint8 out, as
                      training runs it; also float out, normalised in the workers)
    model forward     the model alone, inference, on a uint8 batch already on the device
                      (normalised there, inside the model, as in training and prediction)
    model train       the model alone, forward + backward + Adam step
    train e2e         training with the real loader, as a fraction of model train (see above)
    predict e2e       prediction with the eval loader, as a fraction of model forward (see above)
    ... waiting       the share of an e2e figure's time its loop waited for the loader's next
                      batch (on a GPU the device may still be busy meanwhile)

On a GPU the timings synchronise the device; the loader pins memory there.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import albumentations
import cv2
import numpy as np
import simplejpeg
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from gzoo import cli, schema
from gzoo.data import GalaxyZooDataset, load_rgb
from gzoo.errors import GzooError
from gzoo.module import GalaxyZooModule, masked_mse
from gzoo.train import backbone_norm
from gzoo.transforms import eval_transform, reference_train_transform, train_transform

MODEL_CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


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


def rates(fns: dict[str, Callable], items: list, rounds: int = 5) -> dict[str, float]:
    """Items per CPU second of each function over ``items``, best of ``rounds``.

    CPU time of this process, not wall time, and the functions take turns round by
    round, so other work on the machine disturbs neither the figures nor their ratios much.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.process_time()
            for item in items:
                fn(item)
            best[name] = min(best[name], time.process_time() - start)
    return {name: len(items) / max(t, 1e-9) for name, t in best.items()}


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
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def one_core(paths: list[Path], size: int, mean, std) -> dict[str, float]:
    """Decode and transform rates on one core, and each transform's cost as a multiple of decode."""
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        pipelines = {
            "train_transform": train_transform(size, mean, std, normalise=False),  # as training runs it
            "train_transform_float": train_transform(size, mean, std),
            "reference_transform": reference_train_transform(size, mean, std),
            "eval_transform": eval_transform(size, mean, std, normalise=False),
        }
        for tf in pipelines.values():  # warm up: first calls allocate
            tf(image=load_rgb(paths[0]))
        fns = {"decode": load_rgb, "decode_pil": decode_pil, "decode_cv2": decode_cv2}
        fns.update({name: (lambda p, tf=tf: tf(image=load_rgb(p))) for name, tf in pipelines.items()})
        out = {f"{name}_img_s": r for name, r in rates(fns, paths).items()}
        for name in pipelines:
            out[f"{name}_cost_x_decode"] = out["decode_img_s"] / out[f"{name}_img_s"]
        return out
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])


def make_loader(paths: list[Path], transform, batch_size: int, workers: int, shuffle: bool, device: torch.device) -> DataLoader:
    """The real dataset with random labels, loaded as GalaxyZooDataModule loads it."""
    labels = np.random.default_rng(0).random((len(paths), schema.NUM_ANSWERS))
    dataset = GalaxyZooDataset(paths, labels, np.arange(len(paths)), transform)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=True,
    )


class Runner:
    """The model on the device with one training step and one forward pass, timed with the device synchronised."""

    def __init__(self, timm_name: str, size: int, mean, std, device: torch.device, precision: str, channels_last: bool):
        self.device, self.channels_last = device, channels_last
        self.module = GalaxyZooModule(timm_name=timm_name, pretrained=False, image_size=size, mean=mean, std=std).to(device)
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam([p for p in self.module.parameters() if p.requires_grad], lr=1.5e-4)
        bf16 = precision == "bf16-mixed"
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def to_device(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch's tensors on the device, the image in channels_last if asked."""
        out = {k: batch[k].to(self.device, non_blocking=True) for k in ("image", "target", "mask", "brightness") if k in batch}
        if self.channels_last:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    def train_step(self, batch: dict) -> None:
        self.module.train()
        b = self.to_device(batch)
        with self.autocast():
            loss = masked_mse(self.module(b["image"], b.get("brightness")), b["target"], b["mask"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.inference_mode()
    def forward(self, batch: dict) -> None:
        self.module.eval()
        x = self.to_device(batch)["image"]
        with self.autocast():
            self.module(x).cpu()  # the predictions leave the device, as in prediction

    def steps_per_s(self, step: Callable[[dict], None], batches) -> tuple[float, float]:
        """Steps per second over ``batches`` after the first, which warms up (and starts the loader's
        workers), and the share of that time the loop spent waiting for the next batch."""
        batches = iter(batches)
        step(next(batches))
        self.sync()
        start, waited, count = time.perf_counter(), 0.0, 0
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - t
            if batch is None:
                break
            step(batch)
            count += 1
        self.sync()
        elapsed = time.perf_counter() - start
        return count / elapsed, waited / elapsed


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
    return count / (time.perf_counter() - start)


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


ROWS = [  # (label, value key, ratio key, unit and meaning of the ratio)
    ("decode (load_rgb: simplejpeg)", "decode_img_s", None, "img/s on 1 core"),
    ("decode (PIL)", "decode_pil_img_s", None, "img/s on 1 core"),
    ("decode (cv2.imdecode)", "decode_cv2_img_s", None, "img/s on 1 core"),
    ("train transform (decode + augment)", "train_transform_img_s", "train_transform_cost_x_decode", "img/s on 1 core; ratio: cost in decodes"),
    ("  the same, float out (normalised)", "train_transform_float_img_s", "train_transform_float_cost_x_decode", "img/s on 1 core; ratio: cost in decodes"),
    ("  albumentations reference", "reference_transform_img_s", "reference_transform_cost_x_decode", "img/s on 1 core; ratio: cost in decodes"),
    ("eval transform (decode + crop/resize)", "eval_transform_img_s", "eval_transform_cost_x_decode", "img/s on 1 core; ratio: cost in decodes"),
    ("loader, train transform", "loader_img_s", None, "img/s with {workers} workers"),
    ("  the same, float out (normalised)", "loader_float_img_s", None, "img/s with {workers} workers"),
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


def bench(
    images: Path,
    model: str = "b0",
    image_size: int | None = None,
    batch_size: int = 70,
    workers: int = 2,
    n: int = 600,
    steps: int = 10,
    rounds: int = 2,
    threads: int = 0,
    precision: str = "32",
    channels_last: bool = False,
    out: Path = Path("bench.json"),
) -> dict:
    """Run every measurement, print the table, write ``out``; returns what was written."""
    timm_name, size = resolve_model(model, image_size)
    mean, std = backbone_norm(timm_name)
    paths = list_jpegs(images, n)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    settings = {
        "images": str(images), "model": model, "timm_name": timm_name, "image_size": size, "batch_size": batch_size,
        "workers": workers, "n": len(paths), "steps": steps, "rounds": rounds, "threads": torch.get_num_threads(),
        "precision": precision, "channels_last": channels_last,
    }
    load = os.getloadavg()[0]  # other work on the machine disturbs the wall-clock figures: say how much there was
    print(f"[gzoo] bench of {timm_name} at {size} px, batch {batch_size}, {workers} workers, {precision}, on {describe_device(device)}; load {load:.1f}", flush=True)

    results = one_core(paths, size, mean, std)
    # uint8 out, as the data module and prediction run them: the model normalises on the device
    train_tf, eval_tf = train_transform(size, mean, std, normalise=False), eval_transform(size, mean, std, normalise=False)
    results["loader_img_s"] = loader_img_s(make_loader(paths, train_tf, batch_size, workers, True, device), device)
    float_tf = train_transform(size, mean, std)  # normalised in the workers, for comparison
    results["loader_float_img_s"] = loader_img_s(make_loader(paths, float_tf, batch_size, workers, True, device), device)

    runner = Runner(timm_name, size, mean, std, device, precision, channels_last)
    step_paths = list(itertools.islice(itertools.cycle(paths), batch_size * (steps + 1)))
    # The model-alone batch waits on the device; from the training pipeline, so it carries brightness too.
    fixed = runner.to_device(next(iter(make_loader(step_paths[:batch_size], train_tf, batch_size, 0, False, device))))
    repeat = [fixed] * (steps + 1)
    pairs = {  # e2e name: (alone name, step, where the e2e batches come from)
        "predict_e2e": ("model_forward", runner.forward, lambda: make_loader(step_paths, eval_tf, batch_size, workers, False, device)),
        "train_e2e": ("model_train", runner.train_step, lambda: make_loader(step_paths, train_tf, batch_size, workers, True, device)),
    }
    for e2e, (alone, step, make) in pairs.items():
        loader = make()  # one loader for every round, its workers started once, as in a training run
        alone_rates, e2e_rates, waits = [], [], []
        for r in range(rounds + 1):  # alone, e2e, alone, ..., alone: each e2e figure has an alone figure on either side
            alone_rates.append(runner.steps_per_s(step, repeat)[0])
            if r < rounds:
                rate, wait = runner.steps_per_s(step, loader)
                e2e_rates.append(rate)
                waits.append(wait)
        del loader  # its workers stop
        ratios = ratios_to_neighbours(e2e_rates, alone_rates)
        results[f"{alone}_img_s_per_round"] = [batch_size * a for a in alone_rates]
        results[f"{e2e}_img_s_per_round"] = [batch_size * e for e in e2e_rates]
        results[f"{alone}_img_s"], results[f"{e2e}_img_s"] = batch_size * max(alone_rates), batch_size * max(e2e_rates)
        results[f"{e2e}_fraction"] = float(np.median(ratios))
        results[f"{e2e}_fraction_per_round"] = ratios
        results[f"{e2e}_wait_fraction"] = max(waits)
    results["train_e2e_steps_s"] = results["train_e2e_img_s"] / batch_size

    print(table(results, workers))
    settings["load_average"] = [load, os.getloadavg()[0]]  # 1-minute load at the start and at the end
    report = {"device": describe_device(device), "versions": versions(), "settings": settings, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[gzoo] wrote {out}", flush=True)
    return report


OPTIONS: cli.Options = {
    "images": (cli.path, cli.REQUIRED),
    "model": (str, "b0"),
    "image_size": (cli.integer(8), None),
    "batch_size": (cli.integer(1), 70),
    "workers": (cli.integer(0), 2),
    "n": (cli.integer(1), 600),
    "steps": (cli.integer(1), 10),
    "rounds": (cli.integer(1), 2),
    "threads": (cli.integer(0), 0),
    "precision": (cli.choice("32", "bf16-mixed"), "32"),
    "channels_last": (cli.boolean, False),
    "out": (cli.path, Path("bench.json")),
}


def main(argv: list[str] | None = None) -> int:
    return cli.run(bench, OPTIONS, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
