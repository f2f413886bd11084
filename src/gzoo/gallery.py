"""Galleries: the galaxies a model is most sure show a given answer.

    python -m gzoo.gallery predictions=FILE.csv|FILE.parquet images=DIR answer=Class4.1 [k=16] [out=FILE.png] [crop=0.5]

A PNG grid of the k galaxies with the highest predicted value for ``answer`` (one of the
37 Kaggle columns), each captioned with its id and that value. ``answer=seed`` draws
the answers the seed report shows, one block of rows per answer, in one tall figure.
``predictions`` is a table as gzoo.predict writes it (CSV or Parquet by its extension): the id
column, GalaxyID (integers) or id_str (names), then the answers. ``images`` is the folder it was
made from, each galaxy's image named <id> plus any suffix gzoo reads (see gzoo.images). Each tile
shows the central ``crop`` of the image (0.5 = what the model sees; 1 = the whole frame). The
default out is beside the predictions: <predictions>_gallery_<answer>.png.

An answer that rests on too few labels (known for fewer than min_labels galaxies of the run's training split; see
gzoo.label_counts) keeps its row, its title saying on how many: the row was asked for, the sheet keeps its layout
for every model, and the title says not to trust it. They are known from ``ckpt=`` (the checkpoint that made the
predictions) or, without it, from the record gzoo.predict keeps in a Parquet file; a CSV carries none. An answer
with no values (gzoo.predict thin_labels=nan) is left out, and a line says so.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from gzoo import schema
from gzoo.config import REQUIRED, option, run_tool
from gzoo.data.catalog import galaxy_id
from gzoo.errors import GzooError
from gzoo.images import IMAGE_SUFFIXES, index_images, load_image
from gzoo.io import table_suffix
from gzoo.label_counts import MIN_KNOWN, OUTPUT_KEY, sentence, thin_columns
from gzoo.label_counts import of_checkpoint as label_counts_of
from gzoo.log import say
from gzoo.schema import SEED_ANSWERS, answer_label
from gzoo.transforms import central_crop

TILE, GAP, CAPTION, TITLE = 160, 6, 18, 26  # pixels: tile side, space between tiles, caption and title heights
#: The id columns of gzoo.predict's tables: Kaggle's integer GalaxyID, or id_str (names) when an id is not all digits.
ID_COLUMNS = (schema.ID_COLUMN, "id_str")


@dataclass
class GalleryOptions:
    predictions: Path = option(REQUIRED, "a predictions table from gzoo.predict (.csv or .parquet): GalaxyID or id_str, then the answers")
    images: Path = option(REQUIRED, "the folder of images (<id>.jpg, .png, .fits ...) the predictions were made from")
    answer: str = option(REQUIRED, "one of the 37 answers (Class1.1 ... Class11.6), or seed: the seed report's 11")
    k: int = option(16, "galaxies shown per answer", low=1)
    out: Path | None = option(None, "the PNG to write (default <predictions>_gallery_<answer>.png beside the predictions)")
    crop: float = option(0.5, "the central fraction of each image shown (0.5 = what the model sees; 1 = the whole frame)")
    ckpt: Path | None = option(None, "the checkpoint that made the predictions: its answers trained on fewer than min_labels known values are marked")
    min_labels: int = option(MIN_KNOWN, "with ckpt=, the known training values below which an answer's row is marked", low=0)


def id_column_of(table: pd.DataFrame) -> str | None:
    """The table's id column (GalaxyID or id_str), or None."""
    return next((c for c in ID_COLUMNS if c in table.columns), None)


def read_predictions(path: Path, columns: list[str]) -> pd.DataFrame:
    """The id column and the asked columns of a predictions table (CSV or Parquet by its extension)."""
    if not path.is_file():
        raise GzooError(f"predictions file {path} not found; make one with `python -m gzoo.predict`.")
    suffix = table_suffix(path, "predictions")
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
        else:  # names stay text ("0042" is not 42); GalaxyIDs are integers
            table = pd.read_csv(path, dtype={"id_str": str})
    except Exception as e:  # pandas and pyarrow raise many kinds for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GzooError(f"predictions file {path} is not a readable {suffix[1:]} file ({reason}).") from None
    id_column = id_column_of(table)
    missing = [c for c in columns if c not in table.columns]
    if id_column is None or missing:
        what = "id column (GalaxyID or id_str)" if id_column is None else f"column {missing[0]}"
        raise GzooError(f"predictions file {path} has no {what}; it should be a table from gzoo.predict: GalaxyID or id_str, then Class1.1 ... Class11.6.")
    blank = table[id_column].isna() | (table[id_column].astype(str).str.strip() == "")
    if blank.any():
        raise GzooError(f"predictions file {path}, row {int(blank.to_numpy().argmax()) + 2}: the id column {id_column} is empty.")
    return table[[id_column, *columns]]


def top_k(table: pd.DataFrame, column: str, k: int) -> pd.DataFrame:
    """The k rows with the highest value in ``column`` (ties: lower id first)."""
    return table.sort_values([column, id_column_of(table)], ascending=[False, True]).head(k)


def image_of(found: dict, images: Path, gid) -> Path:
    """The image file of galaxy ``gid`` (a table's id) in the folder ``images`` (``found``: gzoo.images.index_images's by_id)."""
    path = found.get(galaxy_id(gid))  # "100150" and 100150 are one galaxy, as file names make them
    if path is None:
        raise GzooError(
            f"image of galaxy {gid} cannot be read: {images} has no file {gid}{'|'.join(IMAGE_SUFFIXES)}; images= must be the folder the predictions were made from."
        )
    return path


def thin_answers(predictions: Path, ckpt: Path | None = None, min_labels: int = MIN_KNOWN) -> tuple[dict[str, int], int] | None:
    """The answers that rest on too few training labels, each with its count, and the threshold: from ``ckpt``'s
    record when given, else from the record gzoo.predict keeps in a Parquet file; None when unknown (a CSV, a
    checkpoint made before gzoo recorded the counts)."""
    if ckpt is not None:
        counts = label_counts_of(ckpt, "ckpt")
        return None if counts is None else (thin_columns(counts, min_labels), min_labels)
    if predictions.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq

    try:
        record = json.loads((pq.read_schema(predictions).metadata or {})[OUTPUT_KEY.encode()])
        return {str(c): int(n) for c, n in record["thin"].items()}, int(record["min_labels"])
    except (KeyError, TypeError, ValueError):  # no record (made before gzoo kept one, or by another tool)
        return None


def gallery(
    predictions: str | Path,
    images: str | Path,
    answer: str = "Class1.1",
    k: int = 16,
    out: str | Path | None = None,
    crop: float = 0.5,
    ckpt: str | Path | None = None,
    min_labels: int = MIN_KNOWN,
) -> Path:
    """Draw the gallery PNG and return its path; answers that rest on too few labels are marked (:func:`thin_answers`)."""
    predictions, images = Path(predictions), Path(images)
    answers = list(SEED_ANSWERS) if answer == "seed" else [answer]
    if answers[0] not in schema.COLUMN_INDEX:
        raise GzooError(f"answer={answer!r} is not one of the 37 answers (Class1.1 ... Class11.6) or 'seed'.")
    if k < 1 or not 0 < crop <= 1:
        raise GzooError(f"k must be >= 1 and crop in (0, 1], got k={k}, crop={crop}.")
    out = Path(out) if out else predictions.with_name(f"{predictions.stem}_gallery_{answer}.png")
    table = read_predictions(predictions, answers)
    id_column = table.columns[0]
    empty = [c for c in answers if table[c].isna().all()]
    if empty:  # nothing to rank: gzoo.predict thin_labels=nan wrote these answers as NaN
        shown = ", ".join(empty)
        if len(empty) == len(answers):
            raise GzooError(
                f"predictions file {predictions} holds no values for {shown} (gzoo.predict thin_labels=nan writes NaN for answers "
                "that rest on too few training labels); choose another answer=, or predict with thin_labels=say."
            )
        say(f"left out {shown}: the predictions hold no values for {'it' if len(empty) == 1 else 'them'} (thin_labels=nan, too few training labels)")
        answers = [c for c in answers if c not in empty]
    thin, least = thin_answers(predictions, Path(ckpt) if ckpt else None, min_labels) or ({}, min_labels)
    marked = {c: n for c, n in thin.items() if c in answers}
    if marked:
        say(f"{sentence(marked, len(answers), least)}: {'their rows are' if len(marked) > 1 else 'its row is'} marked")
    if not images.is_dir():
        raise GzooError(f"image folder {images} cannot be read (it is not a folder); images= must be the folder the predictions were made from.")
    found = index_images(images).by_id

    # Each answer: a title line, then rows of tiles, each tile under its caption.
    cols = min(k, 8)
    rows = math.ceil(min(k, len(table)) / cols)
    cell_w, cell_h = TILE + GAP, CAPTION + TILE + GAP
    section_h = TITLE + rows * cell_h
    sheet = Image.new("RGB", (cols * cell_w, len(answers) * section_h), "white")
    draw = ImageDraw.Draw(sheet)
    title_font, caption_font = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    for s, column in enumerate(answers):
        valued = table.dropna(subset=[column])
        top = top_k(valued, column, k)
        y0 = s * section_h
        # A thin answer keeps its row, marked: the user asked for it, and the sheet keeps its layout for every model.
        title = row_title(column, len(top), len(valued), marked.get(column))
        draw.text((GAP, y0 + 5), title, fill="black" if column not in marked else "firebrick", font=title_font)
        for j, (gid, value) in enumerate(zip(top[id_column], top[column])):
            x, y = (j % cols) * cell_w + GAP // 2, y0 + TITLE + (j // cols) * cell_h
            draw.text((x, y + 2), caption(str(gid), value, caption_font), fill="black", font=caption_font)
            sheet.paste(tile(image_of(found, images, gid), crop), (x, y + CAPTION))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def row_title(column: str, shown: int, of: int, labels: int | None = None) -> str:
    """An answer's row title: ``Class3.1 bar through the centre? yes: top 16 of 79``, and for an answer that rests on
    too few labels ``(only 6 training labels)``."""
    return f"{answer_label(column)}: top {shown} of {of}" + (f"  (only {labels} training labels)" if labels is not None else "")


def tile(path: Path, crop: float = 0.5, side: int = TILE) -> Image.Image:
    """The central ``crop`` of an image file as a ``side`` x ``side`` tile (an unreadable file: a GzooError naming it)."""
    try:
        pixels = central_crop(load_image(path), crop)
    except GzooError:
        raise  # a FITS file without astropy: its own sentence
    except Exception as e:  # not an image
        raise GzooError(f"image {path} cannot be read ({e}); images= must be the folder or catalogue the galaxies were read from.") from None
    return Image.fromarray(pixels).resize((side, side), Image.Resampling.LANCZOS)


def find_images(images: Path, ids: list, id_column: str = "id_str", file_column: str = "file_loc") -> dict:
    """The image file of each of ``ids``: from a folder of <id>.<ext> files (subfolders too) or a catalogue (.csv,
    .parquet; its ``id_column`` and ``file_column``, relative paths from its folder). A galaxy not found is a GzooError."""
    images = Path(images).expanduser()
    wanted = {galaxy_id(i) for i in ids}
    if images.is_dir():
        from gzoo.inference import list_images

        paths, names = list_images(images)
        found = {galaxy_id(n): p for n, p in zip(names, paths) if galaxy_id(n) in wanted}
    elif images.suffix.lower() in (".csv", ".parquet") and images.is_file():
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        try:
            if images.suffix.lower() == ".parquet":
                table = pq.read_table(images, columns=[id_column, file_column])
            else:
                table = pcsv.read_csv(images, convert_options=pcsv.ConvertOptions(include_columns=[id_column, file_column], column_types={id_column: "string"}))
        except Exception as e:  # pyarrow raises several kinds for a missing column or a damaged file
            raise GzooError(
                f"catalogue {images} cannot be read for columns {id_column} and {file_column} ({str(e).splitlines()[0]}); images= must be a catalogue with them."
            ) from None
        found = {}
        for gid, file in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
            key = galaxy_id(gid)
            if key in wanted and key not in found and file:
                path = Path(file)
                found[key] = path if path.is_absolute() else images.parent / path
    else:
        raise GzooError(f"images={images} not found; give the folder of images or the catalogue (.csv, .parquet) the galaxies were read from.")
    absent = [i for i in ids if galaxy_id(i) not in found]
    if absent:
        raise GzooError(f"galaxy {absent[0]} has no image in {images}; images= must be the folder or catalogue the embeddings were made from.")
    return {i: found[galaxy_id(i)] for i in ids}


def draw_sheet(rows: list[tuple[str, list[tuple[Any, str, str | None]]]], out: Path, crop: float = 0.5, lines: int = 1) -> Path:
    """A PNG of rows of captioned tiles, each row under its title: ``rows`` is [(title, [(image file or tile,
    caption, frame colour or None), ...]), ...]; ``lines`` of caption per tile. Written atomically."""
    from gzoo.io import atomic_open

    cols = max(len(tiles) for _, tiles in rows)
    cell_w, cell_h = TILE + GAP, CAPTION * lines + TILE + GAP
    row_h = TITLE + cell_h
    sheet = Image.new("RGB", (cols * cell_w + GAP, len(rows) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    title_font, caption_font = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    for r, (title, tiles) in enumerate(rows):
        y0 = r * row_h
        draw.text((GAP, y0 + 5), title, fill="black", font=title_font)
        for j, (image, text, frame) in enumerate(tiles):
            x, y = j * cell_w + GAP, y0 + TITLE
            draw.multiline_text((x, y + 2), text, fill="black", font=caption_font, spacing=3)
            picture = image if isinstance(image, Image.Image) else tile(image, crop)
            sheet.paste(picture, (x, y + CAPTION * lines))
            if frame:
                draw.rectangle([x - 2, y + CAPTION * lines - 2, x + TILE + 1, y + CAPTION * lines + TILE + 1], outline=frame, width=3)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as f:
        sheet.save(f, format="PNG")
    return out


def caption(gid: str, value: float, font) -> str:
    """``<id>  <value>``, a long id cut short (ending in an ellipsis) to fit under a tile."""
    for n in range(len(gid), 4, -1):
        text = f"{gid if n == len(gid) else gid[: n - 1] + '…'}  {value:.3f}"
        if font.getlength(text) <= TILE:
            return text
    return text if len(gid) > 4 else f"{gid}  {value:.3f}"


def main(argv: list[str] | None = None) -> int:
    return run_tool(
        lambda o: say(f"gallery in {gallery(o.predictions, o.images, o.answer, o.k, o.out, o.crop, o.ckpt, o.min_labels)}"), GalleryOptions, argv, __doc__
    )


if __name__ == "__main__":
    sys.exit(main())
