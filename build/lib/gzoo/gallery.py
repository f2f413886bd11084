"""Galleries: the galaxies a model is most sure show a given answer.

    python -m gzoo.gallery predictions=CSV images=DIR answer=Class4.1 [k=16] [out=FILE.png] [crop=0.5]

A PNG grid of the k galaxies with the highest predicted value for ``answer`` (one of the
37 Kaggle columns), each captioned with its GalaxyID and that value. ``answer=seed`` draws
the answers the seed report shows, one block of rows per answer, in one tall figure.
``predictions`` is a Kaggle-format CSV (e.g. from gzoo.predict); ``images`` the folder of
<GalaxyID>.jpg it was made from. Each tile shows the central ``crop`` of the image (0.5 =
what the model sees; 1 = the whole frame). The default out is beside the predictions:
<predictions>_gallery_<answer>.png.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from gzoo import schema
from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.images import load_image
from gzoo.log import say
from gzoo.transforms import central_crop

#: The answers whose galleries the seed report shows (its Figures 23-31 and more).
SEED_ANSWERS = ("Class1.1", "Class1.3", "Class2.1", "Class3.1", "Class4.1", "Class5.1", "Class5.2", "Class5.4", "Class6.1", "Class11.1", "Class11.3")
TILE, GAP, CAPTION, TITLE = 160, 6, 18, 26  # pixels: tile side, space between tiles, caption and title heights


@dataclass
class GalleryOptions:
    predictions: Path = option(REQUIRED, "a Kaggle-format predictions CSV (e.g. from gzoo.predict)")
    images: Path = option(REQUIRED, "the folder of <GalaxyID>.jpg the predictions were made from")
    answer: str = option(REQUIRED, "one of the 37 answers (Class1.1 ... Class11.6), or seed: the seed report's 11")
    k: int = option(16, "galaxies shown per answer", low=1)
    out: Path | None = option(None, "the PNG to write (default <predictions>_gallery_<answer>.png beside the CSV)")
    crop: float = option(0.5, "the central fraction of each image shown (0.5 = what the model sees; 1 = the whole frame)")


def answer_label(column: str) -> str:
    """'Class4.1' -> 'Class4.1 spiral arm pattern? yes'."""
    question, answer = (int(n) for n in column.removeprefix("Class").split("."))
    q = schema.QUESTIONS[question - 1]
    return f"{column} {q.text} {q.answers[answer - 1]}"


def read_predictions(path: Path, columns: list[str]) -> pd.DataFrame:
    """GalaxyID and the asked columns of a Kaggle-format predictions CSV."""
    if not path.is_file():
        raise GzooError(f"predictions file {path} not found; make one with `python -m gzoo.predict`.")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise GzooError(f"predictions file {path} is not a readable CSV ({e}).") from None
    missing = [c for c in (schema.ID_COLUMN, *columns) if c not in table.columns]
    if missing:
        raise GzooError(f"predictions file {path} has no column {missing[0]}; it should have the Kaggle header GalaxyID,Class1.1,...,Class11.6.")
    return table[[schema.ID_COLUMN, *columns]]


def top_k(table: pd.DataFrame, column: str, k: int) -> pd.DataFrame:
    """The k rows with the highest value in ``column`` (ties: lower GalaxyID first)."""
    return table.sort_values([column, schema.ID_COLUMN], ascending=[False, True]).head(k)


def gallery(predictions: str | Path, images: str | Path, answer: str = "Class1.1", k: int = 16, out: str | Path | None = None, crop: float = 0.5) -> Path:
    """Draw the gallery PNG and return its path."""
    predictions, images = Path(predictions), Path(images)
    answers = list(SEED_ANSWERS) if answer == "seed" else [answer]
    if answers[0] not in schema.COLUMN_INDEX:
        raise GzooError(f"answer={answer!r} is not one of the 37 answers (Class1.1 ... Class11.6) or 'seed'.")
    if k < 1 or not 0 < crop <= 1:
        raise GzooError(f"k must be >= 1 and crop in (0, 1], got k={k}, crop={crop}.")
    out = Path(out) if out else predictions.with_name(f"{predictions.stem}_gallery_{answer}.png")
    table = read_predictions(predictions, answers)

    # Each answer: a title line, then rows of tiles, each tile under its caption.
    cols = min(k, 8)
    rows = math.ceil(min(k, len(table)) / cols)
    cell_w, cell_h = TILE + GAP, CAPTION + TILE + GAP
    section_h = TITLE + rows * cell_h
    sheet = Image.new("RGB", (cols * cell_w, len(answers) * section_h), "white")
    draw = ImageDraw.Draw(sheet)
    title_font, caption_font = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    for s, column in enumerate(answers):
        top = top_k(table, column, k)
        y0 = s * section_h
        draw.text((GAP, y0 + 5), f"{answer_label(column)}: top {len(top)} of {len(table)}", fill="black", font=title_font)
        for j, (gid, value) in enumerate(zip(top[schema.ID_COLUMN], top[column])):
            x, y = (j % cols) * cell_w + GAP // 2, y0 + TITLE + (j // cols) * cell_h
            path = images / f"{int(gid)}.jpg"
            try:
                pixels = central_crop(load_image(path), crop)
            except Exception as e:  # missing, or not an image
                raise GzooError(f"image {path} cannot be read ({e}); images= must be the folder the predictions were made from.") from None
            draw.text((x, y + 2), f"{int(gid)}  {value:.3f}", fill="black", font=caption_font)
            sheet.paste(Image.fromarray(pixels).resize((TILE, TILE), Image.LANCZOS), (x, y + CAPTION))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    return run_tool(lambda o: say(f"gallery in {gallery(o.predictions, o.images, o.answer, o.k, o.out, o.crop)}"), GalleryOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
