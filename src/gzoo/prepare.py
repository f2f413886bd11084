"""Survey FITS cutouts made once into GZ2-like PNG files, with a catalogue pointing at them.

    python -m gzoo.prepare catalog=cutouts.parquet out=prepared/ [fits.bands=[g,r,z] fits.rgb=[z,r,g]] [preview=16]

The catalogue (.csv or .parquet) has an id column (id_str) and, per galaxy, one file per band (the columns
fits.band_column names: file_g, file_r, file_i) or one FITS file (file_loc: a cube, or one extension per band),
and optionally the galaxy's size in arcsec (fits.size_column, petroR90_r), with which each cutout is resampled
to GZ2's scale. Each galaxy becomes ``out/<id>.png``, a fits.size x fits.size composite made exactly as training
and prediction make it in their data loaders (gzoo.fits.load_fits, the same code); then ``out/catalog.parquet``
lists them (id_str, file_loc, and the catalogue's other columns, e.g. labels), ready for
``python -m gzoo.train data=catalog data.catalog=out/catalog.parquet``. ``out/prepare.json`` records the options.

Each PNG is written to a temporary file and renamed when complete, so one that exists is whole: running the same
command again after a stop skips the PNGs that exist and finishes the rest (a different fits.* than the
recorded one is refused unless overwrite=true, which makes every PNG again). A second run on the same out
waits its turn (refused, naming the first). An unreadable cutout stops the run naming it; with
on_bad_image=skip it is left out of catalog.parquet and listed in out/skipped.txt. ``preview=N`` also draws
``out/preview.png``, a contact sheet of the first N composites, to check the options by eye.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gzoo.config import REQUIRED, option, run_tool
from gzoo.data import BAD_IMAGE_MODES, make_loader
from gzoo.data.catalog import galaxy_id, read_table
from gzoo.errors import GzooError
from gzoo.fits import FitsCutout, FitsOptions, cutout_of_row, has_band_columns, load_fits, need_fits_reader
from gzoo.io import atomic_open, atomic_write_text, lock_folder, write_table
from gzoo.log import say

CATALOG = "catalog.parquet"
RECORD = "prepare.json"
PREVIEW = "preview.png"


@dataclass
class PrepareOptions:
    catalog: Path = option(REQUIRED, "the catalogue of FITS cutouts (.csv or .parquet): id_str, and file_g/file_r/file_i or file_loc")
    out: Path = option(REQUIRED, "the folder of <id>.png files and catalog.parquet")
    id_column: str = option("id_str", "the catalogue's id column")
    file_column: str = option("file_loc", "its column of one FITS file per galaxy (when it has no per-band columns)")
    preview: int = option(0, "also draw out/preview.png: a contact sheet of the first N composites (0: none)", low=0)
    on_bad_image: str = option("error", "error: stop at an unreadable cutout, naming it; skip: leave it out and list it", choices=BAD_IMAGE_MODES)
    overwrite: bool = option(False, "make every PNG again (another fits.* than out/prepare.json records needs it)")
    num_workers: int = option(2, "processes making composites", low=0)
    progress: bool = option(True, "show a progress bar")
    fits: FitsOptions = field(default_factory=FitsOptions)  # how a cutout becomes the image (gzoo.fits)


def png_name(gid: int | str) -> str:
    """The PNG of a galaxy id: ``<id>.png``, path separators replaced."""
    return str(gid).replace("/", "_").replace("\\", "_") + ".png"


class _Composites(Dataset):
    """Makes and writes one PNG per item in a loader worker: (index, "" or the reason it could not)."""

    def __init__(self, items: list, targets: list[Path], fits: FitsOptions):
        self.items, self.targets, self.fits = items, targets, fits

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, str]:
        from PIL import Image

        try:
            image = load_fits(self.items[k], self.fits)
        except GzooError:
            raise
        except Exception as e:  # astropy and the composite raise many kinds for bad files
            return k, (str(e).strip().splitlines() or [type(e).__name__])[0]
        with atomic_open(self.targets[k], "wb") as f:
            Image.fromarray(image).save(f, format="PNG")
        return k, ""


def read_cutouts(catalog: Path, id_column: str, file_column: str, fits: FitsOptions) -> tuple[pd.DataFrame, list, list]:
    """The catalogue as a table of strings, its items (gzoo.fits.cutout_of_row) and ids, checked: an id column,
    per-band or file columns, each id once, each file there."""
    table = read_table(catalog)
    where = f"catalogue {catalog}"
    if id_column not in table.columns:
        raise GzooError(f"{where} has no column {id_column!r} (its columns: {', '.join(map(str, table.columns[:12]))}); set id_column= to its id column.")
    if not has_band_columns(list(table.columns), fits) and file_column not in table.columns:
        raise GzooError(
            f"{where} has neither per-band file columns ({', '.join(fits.band_columns())}) nor {file_column!r}; "
            "set fits.band_column (e.g. fits.band_column=path_{band}) or file_column= to its columns."
        )
    if len(table) == 0:
        raise GzooError(f"{where} has no rows.")
    ids: list = []
    items: list[FitsCutout] = []
    seen: dict[str, int] = {}
    columns = [c for c in (file_column, *fits.band_columns(), fits.size_column) if c and c in table.columns]
    for row, (raw, record) in enumerate(zip(table[id_column], table[columns].to_dict("records"))):
        gid = galaxy_id(raw)
        if gid == "":
            raise GzooError(f"{where}, row {row + 2}: the id column {id_column} is empty.")
        if png_name(gid) in seen:
            raise GzooError(f"{where}, rows {seen[png_name(gid)] + 2} and {row + 2} are both galaxy {gid!r}; each galaxy must appear once.")
        seen[png_name(gid)] = row
        item = cutout_of_row(record, fits, catalog.parent, file_column, f"{where}, row {row + 2}")
        for path in item.files if isinstance(item, FitsCutout) else (item,):
            if not path.is_file():
                raise GzooError(f"{where}, row {row + 2}: {path} does not exist; fix the path (relative ones are read from {catalog.parent}).")
        if not isinstance(item, FitsCutout):
            raise GzooError(
                f"{where}, row {row + 2}: {item} is not a FITS file; gzoo.prepare makes composites of FITS cutouts (other images need no preparing)."
            )
        ids.append(gid)
        items.append(item)
    return table, items, ids


def prepare(o: PrepareOptions) -> Path:
    """Make ``o.out``'s PNGs (those missing) and its catalog.parquet; returns the catalogue's path."""
    fits = o.fits
    table, items, ids = read_cutouts(o.catalog, o.id_column, o.file_column, fits)
    need_fits_reader(items[0])  # here, not in a worker
    out = o.out
    with lock_folder(out, "wait for it to end, or choose another out="):
        record: dict = {"fits": asdict(fits), "catalog": str(o.catalog)}
        earlier = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else None
        if earlier is not None and earlier.get("fits") != record["fits"] and not o.overwrite:
            changed = sorted(k for k, v in record["fits"].items() if earlier.get("fits", {}).get(k) != v)
            raise GzooError(
                f"{out} was prepared with other FITS options ({', '.join(f'fits.{k}' for k in changed)} differ); "
                "choose another out=, or pass overwrite=true to make every PNG again with these."
            )
        atomic_write_text(out / RECORD, json.dumps(record, indent=2) + "\n")
        targets = [out / png_name(g) for g in ids]
        todo = [k for k, t in enumerate(targets) if o.overwrite or not t.is_file()]
        if len(todo) < len(targets):
            say(f"{len(targets) - len(todo)} of {len(targets)} PNGs in {out} exist already; making the other {len(todo)}")
        bad: dict[int, str] = {}
        if todo:
            dataset = _Composites([items[k] for k in todo], [targets[k] for k in todo], fits)
            loader = make_loader(dataset, batch_size=None, num_workers=o.num_workers, persistent_workers=False, pin_memory=False)
            with tqdm(total=len(todo), desc="composites", unit="img", disable=not o.progress) as bar:
                for k, reason in loader:
                    bar.update()
                    if reason:
                        if o.on_bad_image == "error":
                            raise GzooError(
                                f"cutout {items[todo[k]]} cannot be made into an image ({reason}); replace or remove it, or pass on_bad_image=skip to leave it out."
                            )
                        bad[todo[k]] = reason
        good = [k for k in range(len(ids)) if k not in bad and targets[k].is_file()]
        drop = [c for c in (o.id_column, o.file_column, *fits.band_columns()) if c in table.columns]
        prepared = table.drop(columns=drop).iloc[good].reset_index(drop=True)
        prepared.insert(0, "file_loc", [targets[k].name for k in good])
        prepared.insert(0, "id_str", [str(ids[k]) for k in good])
        path = write_table(prepared, out / CATALOG, "out")
        skipped = out / "skipped.txt"
        skipped.unlink(missing_ok=True)
        if bad:
            atomic_write_text(skipped, "".join(f"{items[k]}\t{r}\n" for k, r in bad.items()))
            say(f"left out {len(bad)} unreadable cutouts (on_bad_image=skip); the list is in {skipped}")
        if o.preview:
            preview(out / PREVIEW, [targets[k] for k in good[: o.preview]], [str(ids[k]) for k in good[: o.preview]])
    say(f"wrote {len(good)} composites and {path}; train on them with data=catalog data.catalog={path}")
    return path


def preview(out: Path, pngs: list[Path], captions: list[str], tile: int = 160, columns: int = 8) -> Path:
    """A contact sheet of composites (each the central half, as the model crops it, with its id), written atomically."""
    from PIL import Image, ImageDraw

    if not pngs:
        raise GzooError("preview: there are no composites to draw.")
    rows = (len(pngs) + columns - 1) // columns
    label = 14
    sheet = Image.new("RGB", (min(len(pngs), columns) * tile, rows * (tile + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (png, caption) in enumerate(zip(pngs, captions)):
        with Image.open(png) as im:
            w, h = im.size
            crop = im.convert("RGB").crop((w // 4, h // 4, w - w // 4, h - h // 4)).resize((tile, tile), Image.Resampling.LANCZOS)
        x, y = (k % columns) * tile, (k // columns) * (tile + label)
        sheet.paste(crop, (x, y + label))
        draw.text((x + 3, y + 1), caption[:24], fill="black")
    with atomic_open(out, "wb") as f:
        sheet.save(f, format="PNG")
    say(f"drew {len(pngs)} composites in {out}")
    return out


def composites(items: list, fits: FitsOptions | None = None) -> list[np.ndarray]:
    """The composites of items (files or gzoo.fits.FitsCutout), in this process: what the model will see."""
    return [load_fits(item, fits) for item in items]


def main(argv: list[str] | None = None) -> int:
    return run_tool(prepare, PrepareOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
