"""An uncertainty for every answer: the spread of a prediction, intervals calibrated on validation data, their coverage.

spreads    METHODS: "dropout" (the tail's dropout sampled ``samples`` times on one pass of the body, with fixed
           masks that are the same for every galaxy: GalaxyNet.dropout_masks), "views" (the spread of the TTA
           views' answers; tta >= 2) or "both" (every view with every mask); :func:`spread` makes each a
           standard deviation per answer (gzoo.inference.predict_loader computes them on its one pass)
intervals  the central interval of level p (in %): answer +- scale_p * (std + floor), clipped to [0, 1]. scale_p
           is the p-quantile, over validation galaxies, of that answer's normalised error |true - answer| / (std +
           floor) (split conformal): honest coverage on galaxies like the validation ones, and wider where the
           network's own spread is wider (a noise image), unlike a constant width. The floor, FLOOR times the
           answer's median spread on those galaxies, keeps an answer the network is sure of from a zero width. An
           answer with fewer than MIN_KNOWN known validation values takes the quantile over every answer's known values.
record     :func:`calibration` -> what training stores in best.ckpt under "gzoo_calibration" (one fit per spread
           and tta); :func:`stated_scales` finds the fit that gzoo.predict's intervals use
coverage   :func:`coverage` (overall, per question, per answer; only known values count), :func:`cross_fitted`
           (scales fitted on one half of the galaxies, coverage measured on the other half, and the other way
           round), :func:`gaussian_coverage` (the raw spread read as a Gaussian sigma), :func:`coverage_rows`
           (gzoo.evaluate's table; a constant width is its baseline) and :func:`plot_coverage`
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import torch
from matplotlib.figure import Figure

from gzoo import schema
from gzoo.errors import GzooError

#: The spreads: the tail's dropout sampled on one pass of the body, the TTA views, or both.
METHODS = ("dropout", "views", "both")
#: The interval levels (in %) a calibration holds, and so the ones gzoo.predict can write.
LEVELS = (50, 68, 80, 90, 95)
#: The floor added to an answer's spread, as a share of its median spread on the calibration galaxies (at least TINY):
#: an answer the network is sure of still gets a width. Relative, so that it means the same for any model's spreads
#: (on gz2-2k about 0.001; shares of 0.03 to 0.3, or absolute floors of 0.0001 to 0.01, give the same coverage there).
FLOOR = 0.1
TINY = 1e-6
#: Known validation values an answer needs for its own scale; fewer: the scale of every answer's known values.
MIN_KNOWN = 20
#: The version of the record a checkpoint holds under "gzoo_calibration".
CALIBRATION_FORMAT = 1
#: Galaxies' order in :func:`cross_fitted`'s two halves: a fixed draw, so a report is the same every time.
HALVES_SEED = 0
#: Dropout samples per galaxy when not said otherwise (10, 30 and 100 gave the same coverage and widths on gz2-2k).
SAMPLES = 30


def check(methods: Sequence[str], tta: int, outputs: str = "predictions", dropout: float | None = None) -> None:
    """The spreads asked for can be made: known names, views for tta >= 2, dropout for a tail that has some (``dropout``:
    its rate, when known), answers being predicted."""
    for m in methods:
        if m not in METHODS:
            raise GzooError(f"uncertainty must be one of none, {', '.join(METHODS)}, got {m!r}.")
        if m in ("views", "both") and tta < 2:
            raise GzooError(f"uncertainty={m} is the spread of the TTA views, so it needs tta >= 2 (e.g. tta=8); use uncertainty=dropout with tta=1.")
        if m in ("dropout", "both") and dropout == 0:
            raise GzooError(f"uncertainty={m} samples the tail's dropout, and this model has none (model.dropout=0); use uncertainty=views with tta=8.")
    if methods and outputs == "embeddings":
        raise GzooError("uncertainty= gives the answers a spread; pass outputs=predictions or outputs=both to write answers.")


def spread(views: torch.Tensor, draws: torch.Tensor | None, method: str) -> torch.Tensor:
    """(B, L) standard deviation of each answer from (B, V, L) answers per view and (K, B, V, L) dropout draws:
    "views": over the V views; "dropout": over the K draws of the views' mean; "both": over all V x K draws."""
    if method == "views":
        return views.std(dim=1, unbiased=False)
    assert draws is not None  # dropout and both sample the tail
    if method == "dropout":
        return draws.mean(dim=2).std(dim=0, unbiased=False)
    return draws.permute(1, 0, 2, 3).flatten(1, 2).std(dim=1, unbiased=False)


# ----------------------------------------------------------------------------- intervals


def floors(std: np.ndarray) -> np.ndarray:
    """(L,) each answer's floor: FLOOR times its median spread over the galaxies of ``std`` (N, L), at least TINY."""
    std = np.asarray(std, dtype=np.float64)
    median = np.nanmedian(std, axis=0) if len(std) else np.zeros(std.shape[1:])
    return np.maximum(FLOOR * np.nan_to_num(median), TINY)


def scores(true: np.ndarray, mean: np.ndarray, std: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """The normalised errors |true - mean| / (std + floor); NaN where the true value is unknown."""
    return np.abs(np.asarray(true, dtype=np.float64) - mean) / (np.asarray(std, dtype=np.float64) + floor)


def conformal_quantile(values: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) * level)-th smallest of ``values`` (the largest when that is past n),
    so that a new value from the same population is below it with probability >= level."""
    values = np.sort(values[~np.isnan(values)])
    if len(values) == 0:
        return math.nan
    k = min(len(values), math.ceil((len(values) + 1) * level))
    return float(values[max(k, 1) - 1])


def fit_scales(true: np.ndarray, mean: np.ndarray, std: np.ndarray, levels: Sequence[int] = LEVELS) -> dict:
    """The intervals fitted on the galaxies of ``true``: {"scale": {"90": [L scales], ...}, "floor": [L], "pooled": which
    answers took the scale of all answers (too few known values), "known": each answer's known values}."""
    floor = floors(std)
    s = scores(true, mean, std, floor)
    known = (~np.isnan(s)).sum(axis=0)
    pooled = known < MIN_KNOWN
    scale = {}
    for level in levels:
        everyone = conformal_quantile(s.ravel(), level / 100)
        scale[str(level)] = [float(conformal_quantile(s[:, j], level / 100) if not pooled[j] else everyone) for j in range(s.shape[1])]
    return {"scale": scale, "floor": [float(v) for v in floor], "pooled": [bool(p) for p in pooled], "known": [int(k) for k in known]}


def bounds(mean: np.ndarray, std: np.ndarray, scale: Sequence[float] | np.ndarray, floor: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the intervals mean +- scale * (std + floor), clipped to [0, 1] (vote fractions)."""
    half = np.asarray(scale, dtype=np.float64) * (np.asarray(std, dtype=np.float64) + np.asarray(floor, dtype=np.float64))
    return np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)


def coverage(true: np.ndarray, lo: np.ndarray, hi: np.ndarray, columns: Sequence[str] | None = None) -> dict:
    """The share of known true values inside [lo, hi]: overall (every known cell counts once, so an answer known for a
    few galaxies weighs little), per question (the 37 Kaggle answers only) and per answer (NaN where none is known),
    with each answer's known values."""
    true = np.asarray(true, dtype=np.float64)
    if columns is None:  # the 37 answers, or the labels by position
        columns = list(schema.COLUMNS) if true.shape[1] == schema.NUM_ANSWERS else [str(j) for j in range(true.shape[1])]
    columns = list(columns)
    known = ~np.isnan(true)
    inside = (true >= lo) & (true <= hi) & known

    def share(sl) -> float:
        n = known[:, sl].sum()
        return float(inside[:, sl].sum() / n) if n else math.nan

    questions = schema.question_slices() if schema.is_gz2(columns) else []
    return {
        "overall": share(slice(None)),
        "per_question": {f"Q{q.number}": share(sl) for q, sl in questions},
        "per_answer": {c: share(slice(j, j + 1)) for j, c in enumerate(columns)},
        "known": {c: int(known[:, j].sum()) for j, c in enumerate(columns)},
    }


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of n galaxies, drawn once (:data:`HALVES_SEED`)."""
    order = np.random.default_rng(HALVES_SEED).permutation(n)
    return order[: n // 2], order[n // 2 :]


def cross_fitted(
    true: np.ndarray, mean: np.ndarray, std: np.ndarray, levels: Sequence[int], columns: Sequence[str] | None = None, reference: np.ndarray | None = None
) -> dict[str, dict]:
    """The honest coverage of calibrated intervals: scales fitted on one half of the galaxies, intervals of the other half
    scored, and the other way round; per level (in %): :func:`coverage`'s table, "width" (the mean width over known
    cells) and "widest_quarter" (the coverage on the quarter of known cells with the largest ``reference`` spread,
    by default ``std``: an interval that ignores how hard a galaxy is covers too few of the hard ones)."""
    true, mean, std = (np.asarray(a, dtype=np.float64) for a in (true, mean, std))
    reference = std if reference is None else np.asarray(reference, dtype=np.float64)
    out = {}
    for level in levels:
        lo, hi = np.full_like(mean, np.nan), np.full_like(mean, np.nan)
        for fit, scored in (halves(len(true)), halves(len(true))[::-1]):
            fitted = fit_scales(true[fit], mean[fit], std[fit], [level])
            lo[scored], hi[scored] = bounds(mean[scored], std[scored], fitted["scale"][str(level)], fitted["floor"])
        table = coverage(true, lo, hi, columns)
        known = ~np.isnan(true)
        hard = known & (reference >= np.quantile(reference[known], 0.75)) if known.any() else known
        inside = (true >= lo) & (true <= hi)
        table["width"] = float((hi - lo)[known].mean()) if known.any() else math.nan
        table["widest_quarter"] = float(inside[hard].mean()) if hard.any() else math.nan
        out[str(level)] = table
    return out


def gaussian_coverage(true: np.ndarray, mean: np.ndarray, std: np.ndarray, levels: Sequence[int]) -> dict[str, float]:
    """The coverage of the raw spread read as a Gaussian sigma (mean +- 1.0 std at 68 %, +- 1.645 std at 90 %), overall."""
    true = np.asarray(true, dtype=np.float64)
    known = ~np.isnan(true)
    out = {}
    for level in levels:
        z = NormalDist().inv_cdf(0.5 + level / 200)
        out[str(level)] = float((np.abs(true - mean) <= z * std)[known].mean()) if known.any() else math.nan
    return out


# ----------------------------------------------------------------------------- the checkpoint's record


def calibration(true: np.ndarray, fits: Sequence[tuple[str, int, int, np.ndarray, np.ndarray]], columns: Sequence[str], split: str = "val") -> dict:
    """What a checkpoint stores under "gzoo_calibration": for each (spread, tta, samples, answers, std) on the galaxies of
    ``true`` (the validation split), the scale of every answer at every level of :data:`LEVELS`."""
    record: dict = {"format": CALIBRATION_FORMAT, "split": split, "galaxies": len(true), "floor_share": FLOOR, "min_known": MIN_KNOWN}
    record |= {"levels": list(LEVELS), "columns": list(columns), "fits": []}
    for method, tta, samples, mean, std in fits:
        record["fits"].append({"method": method, "tta": tta, "samples": samples, **fit_scales(true, mean, std)})
    return record


def stated_scales(record: dict | None, method: str, tta: int) -> tuple[dict | None, str]:
    """The checkpoint's fit for ``method`` at ``tta`` ({"scale": {"90": (L,) ...}, "floor": (L,)}), or None and why."""
    if not record or record.get("format") != CALIBRATION_FORMAT:
        return None, "the checkpoint holds no calibration (it was trained before gzoo calibrated its intervals)"
    for fit in record["fits"]:
        if fit["method"] == method and fit["tta"] == tta:
            return {"scale": {k: np.asarray(v, dtype=np.float64) for k, v in fit["scale"].items()}, "floor": np.asarray(fit["floor"])}, ""
    have = ", ".join(f"uncertainty={f['method']} tta={f['tta']}" for f in record["fits"]) or "none"
    return None, f"the checkpoint's calibration has no fit for uncertainty={method} at tta={tta} (it has {have})"


def interval_columns(label: str, levels: Sequence[int]) -> list[str]:
    """The interval columns of one answer: Class1.1_lo90, Class1.1_hi90 ..."""
    return [f"{label}_{side}{level}" for level in levels for side in ("lo", "hi")]


# ----------------------------------------------------------------------------- gzoo.evaluate's table and picture


def coverage_rows(
    true: np.ndarray,
    mean: np.ndarray,
    stds: dict[str, np.ndarray],
    tta: int,
    levels: Sequence[int],
    columns: Sequence[str],
    record: dict | None,
) -> list[dict]:
    """One row per spread of ``stds`` (answers ``mean`` at ``tta``) and one for a constant width (the baseline): the raw
    Gaussian coverage, the cross-fitted coverage and, when the checkpoint holds a calibration of that spread at that tta,
    the coverage of the intervals gzoo.predict states. The widest quarter is judged by the first spread's std."""
    reference = next(iter(stds.values()), None)
    rows = []
    for method, std in [*stds.items(), ("constant width", np.zeros_like(mean))]:
        row: dict = {"spread": method, "tta": tta, "mean_std": float(np.nanmean(np.where(np.isnan(true), np.nan, std)))}
        row["gaussian"] = gaussian_coverage(true, mean, std, levels) if method != "constant width" else None
        row["cross_fitted"] = cross_fitted(true, mean, std, levels, columns, reference)
        fit, _ = stated_scales(record, method, tta) if method != "constant width" else (None, "")
        if fit is None:
            row["stated"] = None
        else:
            row["stated"] = {str(v): coverage(true, *bounds(mean, std, fit["scale"][str(v)], fit["floor"]), columns) for v in levels if str(v) in fit["scale"]}
        rows.append(row)
    return rows


def coverage_curve(true: np.ndarray, mean: np.ndarray, std: np.ndarray, gaussian: bool) -> tuple[list[int], list[float]]:
    """Expected against observed coverage at levels 5 %, 10 % ... 95 %: cross-fitted intervals, or the raw Gaussian ones."""
    levels = list(range(5, 100, 5))
    if gaussian:
        got = gaussian_coverage(true, mean, std, levels)
        return levels, [got[str(v)] for v in levels]
    table = cross_fitted(true, mean, std, levels)
    return levels, [table[str(v)]["overall"] for v in levels]


def plot_coverage(curves: dict[str, tuple[list[int], list[float]]], title: str) -> Figure:
    """Observed against expected coverage, one line per curve (name -> (levels in %, observed shares)); the diagonal is
    honest. Curves of one spread (the name before its comma) share a colour; the raw spread's ("sigma") are dashed."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="honest")
    colours: dict[str, str] = {}
    for name, (levels, observed) in curves.items():
        colour = colours.setdefault(name.split(",")[0], f"C{len(colours)}")
        ax.plot(np.asarray(levels) / 100, observed, color=colour, marker="o", markersize=3, linestyle="--" if "sigma" in name else "-", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="stated coverage of the interval", ylabel="share of known true fractions inside", title=title)
    ax.legend(fontsize=7, loc="upper left")
    return fig
