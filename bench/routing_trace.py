"""Inputs of the routing benchmark: the Azure LLM inference trace and the Ember grid tables.

The data lives in the shared folder beside the repository (``../shared/data`` from the repo
root, as in CI's clone); :func:`shared_data_dir` finds it or fails saying where it looked.

* :func:`load_trace` reads ``conv.csv`` / ``code.csv`` (arrival time, prompt and output tokens).
* :func:`grid_month` reads Ember's *monthly* national carbon intensity and day-ahead price.
* :func:`diurnal` turns a monthly mean into an hour-of-day curve. Ember publishes no hourly
  data here, so the *shape* is modelled, not measured: a winter weekday with an evening peak
  (17-20 h) and a night trough, scaled so the day averages exactly to the monthly mean.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRACE_FILES = {"chat": "conv.csv", "code": "code.csv"}


class DataMissing(RuntimeError):
    """The shared data folder (or a file in it) is not where the benchmark expects it."""


def shared_data_dir() -> Path:
    """``<repo>/../shared/data`` (or ``$TDN_SHARED_DATA``); raise :class:`DataMissing` if absent."""
    override = os.environ.get("TDN_SHARED_DATA")
    candidates = [Path(override)] if override else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if (path / "azure-llm-2023").is_dir() and (path / "grid").is_dir():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise DataMissing(f"the shared data folder is missing (looked in {looked}); it must hold "
                      "azure-llm-2023/{conv,code}.csv and grid/ember_*.csv")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One row of the trace: seconds since the file's first row, tokens in and out."""

    t: float
    prompt_tokens: int
    output_tokens: int


def _parse_time(text: str) -> datetime:
    # Seven fractional digits upstream; datetime takes six.
    head, _, frac = text.partition(".")
    return datetime.strptime(f"{head}.{(frac + '000000')[:6]}", "%Y-%m-%d %H:%M:%S.%f")


def load_trace(path: Path, limit_s: float | None = None) -> tuple[datetime, list[TraceRequest]]:
    """The trace's first timestamp and its rows (only the first ``limit_s`` seconds if given)."""
    if not path.exists():
        raise DataMissing(f"trace file {path} is missing")
    rows: list[TraceRequest] = []
    start: datetime | None = None
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if [h.strip() for h in header] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise DataMissing(f"{path}: unexpected header {header}")
        for fields in reader:
            if len(fields) != 3:
                continue
            when = _parse_time(fields[0].strip())
            if start is None:
                start = when
            t = (when - start).total_seconds()
            if limit_s is not None and t >= limit_s:
                break
            rows.append(TraceRequest(t, int(fields[1]), max(int(fields[2]), 1)))
    if start is None:
        raise DataMissing(f"{path} has no rows")
    return start, rows


@dataclass(frozen=True, slots=True)
class GridMonth:
    """One country's monthly means: carbon intensity (gCO2/kWh) and day-ahead price (EUR/MWh)."""

    country: str
    month: str
    gco2_per_kwh: float
    eur_per_mwh: float


def grid_month(data: Path, country_codes: list[str], month: str) -> dict[str, GridMonth]:
    """Ember's monthly carbon intensity and price for each ISO code, for ``month`` (YYYY-MM)."""
    grid = data / "grid"
    carbon: dict[str, float] = {}
    price: dict[str, float] = {}
    date = f"{month}-01"
    with (grid / "ember_country_overview_monthly.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["country_code"] in country_codes and row["date"] == date:
                carbon[row["country_code"]] = float(row["emissions_intensity_gco2_per_kwh"])
    with (grid / "ember_price_monthly.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["country_code"] in country_codes and row["date"] == date:
                price[row["country_code"]] = float(row["day_ahead_price_eur_per_mwh"])
    missing = [c for c in country_codes if c not in carbon or c not in price]
    if missing:
        raise DataMissing(f"Ember tables have no {month} row for {', '.join(missing)}")
    return {c: GridMonth(c, month, carbon[c], price[c]) for c in country_codes}


def _shape(hour: float) -> float:
    """Relative deviation from the daily mean at ``hour`` (local), averaging to zero over a day:
    an evening peak near 18:30 and a smaller morning shoulder near 08:00 (winter demand)."""
    return (math.cos(2 * math.pi * (hour - 18.5) / 24)
            + 0.35 * math.cos(4 * math.pi * (hour - 8.0) / 24))


def diurnal(mean: float, amplitude: float, hour: float) -> float:
    """The modelled value at local ``hour`` for a day whose mean is ``mean``.

    ``amplitude`` is the peak's relative height above the mean (before the morning shoulder);
    both cosine terms average to zero over 24 h, so the curve's daily mean is exactly ``mean``.
    """
    return max(mean * (1.0 + amplitude * _shape(hour % 24.0)), 0.0)
