"""Printing and writing result frames."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def print_frame(frame: pl.DataFrame, limit: int = 50) -> None:
    """Print as an aligned table; says how many rows were left out."""
    with pl.Config(
        tbl_rows=limit,
        tbl_cols=-1,
        tbl_width_chars=10_000,
        fmt_str_lengths=80,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_formatting="ASCII_MARKDOWN",
        float_precision=None,
    ):
        print(frame.head(limit))
    if frame.height > limit:
        print(f"({frame.height - limit} more row(s); use --limit N or --out FILE)")
    elif frame.height == 0:
        print("(no rows)")


def write_frame(frame: pl.DataFrame, out: str) -> None:
    """Write to .csv or .parquet (chosen by the file's extension)."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame_out = frame.with_columns(
            [
                pl.col(c).list.eval(pl.element().cast(pl.String)).list.join(";")
                for c, t in frame.schema.items()
                if isinstance(t, pl.List)
            ]
        )
        frame_out.write_csv(path)
    elif suffix in (".parquet", ".pq"):
        frame.write_parquet(path)
    else:
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")
