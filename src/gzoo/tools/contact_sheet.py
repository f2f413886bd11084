"""Contact sheet: synthetic galaxies (gzoo.synth) next to real GZ2 galaxies of the same kind.

    python -m gzoo.tools.contact_sheet real=/path/to/gz2 [out=outputs/synth_vs_real.png] [seed=0] [per_side=4] [overwrite=true]

One row per kind; the left half shows synthetic galaxies chosen by their true features,
the right half real galaxies chosen by their vote fractions (the central 212x212 pixels
of each 424x424 image). ``real`` is a folder with images_training_rev1/ and either
training_solutions_rev1.csv or training_solutions_partial.csv (unknown cells empty).
An existing ``out`` is kept unless overwrite=true (docs/synth_vs_real.png is tracked: draw
elsewhere and copy it over on purpose); the PNG appears only when complete.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from gzoo import synth
from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.images import load_image
from gzoo.io import atomic_open
from gzoo.log import say


@dataclass(frozen=True)
class Kind:
    name: str
    synthetic: Callable[[synth.Galaxy], object]  # which synthetic galaxies show this kind
    real: tuple[tuple[str, float], ...]  # (column, minimum) rules tried in turn, highest values first
    distinct: Callable[[synth.Galaxy], object] | None = None  # show at most one synthetic galaxy per key
    shown: str | None = None  # the column printed under synthetic galaxies (default: the first rule's)


KINDS = (
    Kind("smooth, round", lambda g: g.kind == "smooth" and g.q >= 0.8 and g.odd < 0, (("Class7.1", 0.5),)),
    Kind("smooth, cigar", lambda g: g.kind == "smooth" and g.q < 0.4 and g.odd < 0, (("Class7.3", 0.2),)),
    Kind("edge-on disk", lambda g: g.edge_on and g.odd < 0, (("Class2.1", 0.4),)),
    Kind("spiral", lambda g: 1 <= g.arms <= 5 and not g.bar and g.odd < 0, (("Class4.1", 0.3), ("Class2.2", 0.5))),
    Kind("barred spiral", lambda g: g.arms and g.bar and g.odd < 0, (("Class3.1", 0.2), ("Class2.2", 0.5))),
    Kind("odd feature", lambda g: g.odd >= 0, (("Class8.6", 0.3), ("Class6.1", 0.5)), lambda g: g.odd, "Class6.1"),
    Kind("star / artifact", lambda g: g.kind == "star", (("Class1.3", 0.05),)),
)


def _real_table(real: Path) -> pd.DataFrame:
    for name in ("training_solutions_rev1.csv", "training_solutions_partial.csv"):
        if (real / name).exists():
            return pd.read_csv(real / name)
    raise GzooError(f"{real} has neither training_solutions_rev1.csv nor training_solutions_partial.csv.")


def _pick_real(table: pd.DataFrame, kind: Kind, count: int, used: set[int]) -> list[tuple[int, str]]:
    """Up to ``count`` real galaxies (id, caption) by the kind's rules; each galaxy used once."""
    picked: list[tuple[int, str]] = []
    for column, minimum in kind.real:
        rows = table[table[column] >= minimum].sort_values(column, ascending=False)
        for gid, value in zip(rows["GalaxyID"], rows[column]):
            if len(picked) < count and gid not in used:
                used.add(gid)
                picked.append((int(gid), f"{gid}\n{column} {value:.2f}"))
    return picked


def _pick_synthetic(seed: int, count: int, limit: int = 20000) -> list[list[int]]:
    """For each kind, the indices of the first ``count`` synthetic galaxies of that kind."""
    chosen: list[list[int]] = [[] for _ in KINDS]
    keys: list[set] = [set() for _ in KINDS]
    for index in range(limit):
        g = synth.sample_galaxy(seed, index)
        for kind, indices, seen in zip(KINDS, chosen, keys):
            key = kind.distinct(g) if kind.distinct else index
            if len(indices) < count and kind.synthetic(g) and key not in seen:
                seen.add(key)
                indices.append(index)
                break
        if all(len(i) == count for i in chosen):
            break
    return chosen


def _crop(image: Image.Image, tile: int) -> Image.Image:
    """The central half of the frame (the crop the models see), scaled to ``tile`` pixels."""
    w, h = image.size
    return image.crop((w // 4, h // 4, w - w // 4, h - h // 4)).resize((tile, tile), Image.Resampling.BICUBIC)


def contact_sheet(out: Path, real: Path, seed: int = 0, per_side: int = 4, tile: int = 128, overwrite: bool = False) -> Path:
    """Draw the synthetic-versus-real contact sheet to ``out`` (PNG) and return ``out``; an existing ``out`` only with ``overwrite``."""
    out, real = Path(out), Path(real)
    if out.exists() and not overwrite:
        raise GzooError(f"{out} already exists; pass overwrite=true to replace it, or choose another out=.")
    table = _real_table(real)
    label_w, gap, head = 150, 16, 30
    width = label_w + 2 * per_side * tile + gap
    sheet = Image.new("RGB", (width, head + len(KINDS) * tile), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=10)
    left, right = label_w, label_w + per_side * tile + gap
    draw.text((left + 4, 7), f"synthetic (gzoo.synth, seed {seed}): true features", fill=(0, 0, 0), font=font)
    draw.text((right + 4, 7), f"real ({real.name}): chosen by vote fractions", fill=(0, 0, 0), font=font)

    used: set[int] = set()
    for row, (kind, indices) in enumerate(zip(KINDS, _pick_synthetic(seed, per_side))):
        top = head + row * tile
        draw.multiline_text((6, top + tile // 2 - 10), kind.name.replace(", ", ",\n"), fill=(0, 0, 0), font=font)
        tiles = []
        for index in indices:
            g, labels = synth.sample_labels(1, seed, start=index)
            column = kind.shown or kind.real[0][0]
            image = synth.render(g[0], seed, index)
            odd = f"  {synth.ODD_NAMES[g[0].odd]}" if g[0].odd >= 0 else ""
            tiles.append((left, image, f"#{index}{odd}\n{column} {labels[column].iloc[0]:.2f}"))
        for gid, caption in _pick_real(table, kind, per_side, used):
            tiles.append((right, Image.fromarray(load_image(real / "images_training_rev1" / f"{gid}.jpg")), caption))
        for k, (x0, image, caption) in enumerate(tiles):
            x = x0 + (k if x0 == left else k - len(indices)) * tile
            sheet.paste(_crop(image, tile), (x, top))
            draw.multiline_text((x + 3, top + tile - 26), caption, fill=(230, 230, 230), font=small)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as f:  # a killed run leaves no half-written PNG under the name
        sheet.save(f, format="PNG", optimize=True)
    return out


@dataclass
class ContactSheetOptions:
    out: Path = option(Path("outputs/synth_vs_real.png"), "the PNG to draw (outputs/ is not tracked; docs/synth_vs_real.png is)")
    real: Path = option(REQUIRED, "a folder of real GZ2 data: images_training_rev1/ and its solutions CSV")
    seed: int = option(0, "the seed of the synthetic galaxies (as in python -m gzoo.synth)", low=0)
    per_side: int = option(4, "galaxies per row on each side", low=1)
    overwrite: bool = option(False, "replace an existing out")


def _draw(options: ContactSheetOptions) -> Path:
    out = contact_sheet(options.out.expanduser(), options.real.expanduser(), options.seed, options.per_side, overwrite=options.overwrite)
    say(f"contact sheet in {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_tool(_draw, ContactSheetOptions, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
