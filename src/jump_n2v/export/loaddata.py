"""Write the CellProfiler LoadData CSV that points at a plate's exported denoised TIFFs.

:func:`write_loaddata_csv` writes the LoadData CSV pointing at the exported files. For a LoadData
plate it is the input table itself, restricted to this plate's rows: every column kept, in order
(metadata, illumination functions, channels that were not denoised), with only the exported
channels' ``FileName_Orig<CH>`` / ``PathName_Orig<CH>`` (or ``URL_Orig<CH>``) replaced. Other plates
get ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and the file columns of the exported
channels. Either way a CellProfiler pipeline built for the raw images runs on the denoised ones unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.export.channels import index_by_image, open_denoised_channels
from jump_n2v.export.tiff import exported_paths
from jump_n2v.ingest.discover import LOAD_DATA_ROW, find_loaddata_column, read_table
from jump_n2v.plumbing.wells import normalise_well


def _rows_of_source_table(
    source_table: str | os.PathLike, index: pd.DataFrame, index_csv, storage: Mapping | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The source LoadData table's rows of ``index``'s sites and the index in the same order (the
    table's), each row checked against its site."""
    if LOAD_DATA_ROW not in index.columns:
        raise ValueError(
            f"{index_csv} has no {LOAD_DATA_ROW} column linking its sites to the rows of {source_table}; "
            "rebuild the index (delete it and rerun)"
        )
    table = read_table(source_table, storage)
    positions = index[LOAD_DATA_ROW].astype(int)
    outside = positions[(positions < 0) | (positions >= len(table))]
    if not outside.empty:
        raise ValueError(f"{index_csv}: {LOAD_DATA_ROW} {outside.iloc[0]} is not a data row of {source_table} ({len(table)} rows)")
    rows = table.iloc[positions.to_numpy()].copy()
    for (image, well, site), (_, row) in zip(index[["image", "well", "site"]].itertuples(index=False), rows.iterrows()):
        try:
            same = normalise_well(row["Metadata_Well"]) == well and int(float(row["Metadata_Site"])) == int(site)
        except (KeyError, ValueError):
            same = False
        if not same:
            raise ValueError(
                f"{source_table}, data row {row.name + 1} is not well {well} site {site} as the index {index_csv} says "
                f"(image {image}): the table changed since the index was built; rebuild the index"
            )
    order = np.argsort(positions.to_numpy(), kind="stable")
    return rows.iloc[order], index.iloc[order]


def write_loaddata_csv(
    index_csv: str | os.PathLike,
    denoised_zarrs: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike | Mapping[str, str | os.PathLike],
    layout: str,
    dst_path: str | os.PathLike,
    *,
    source_table: str | os.PathLike | None = None,
    storage: Mapping | None = None,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Write a CellProfiler LoadData CSV pointing at the TIFFs :func:`export_tiffs` wrote.

    ``denoised_zarrs`` maps each exported channel to its denoised array. ``out_dir`` is the folder
    :func:`export_tiffs` wrote to, or a mapping channel -> folder when each channel was exported to its
    own. Every referenced file must exist.

    With ``source_table`` (the plate's LoadData table, .csv, .csv.gz or .parquet, local or s3:// read
    with the plate's ``storage`` settings; the index must come from it) the output is that table's rows of this plate, in the table's order, every column kept;
    only each exported channel's ``FileName_Orig<CH>`` + ``PathName_Orig<CH>`` (absolute folder) and
    ``URL_Orig<CH>`` (a file:// URL) are replaced, and ``Series_``/``Frame_Orig<CH>`` set to 0 (the
    exported files hold one image). Without it the table has ``Metadata_Plate``, ``Metadata_Well``,
    ``Metadata_Site`` and ``FileName_Orig<CH>`` / ``PathName_Orig<CH>`` per channel, in index order.

    A site with an image rejected at ingest in any exported channel is left out, since CellProfiler
    needs every channel of a row; the number and the first sites are logged as a warning (the
    per-channel rejects tables say why). The output is always a plain .csv. Returns the table.
    """
    if not denoised_zarrs:
        raise ValueError("write_loaddata_csv: no channels given")
    channels = list(denoised_zarrs)
    index = index_by_image(index_csv, channels)
    present = set(index.index)
    for _, image_ids in open_denoised_channels(denoised_zarrs).values():
        present &= set(image_ids)
    if source_table is not None:
        table, sites = _rows_of_source_table(source_table, index, index_csv, storage)
        kept = sites["image"].isin(present).to_numpy()
        table, sites = table[kept], sites[kept]
    else:
        sites = index[index["image"].isin(present)]
        table = pd.DataFrame(
            {"Metadata_Plate": sites["plate"], "Metadata_Well": sites["well"], "Metadata_Site": sites["site"]}
        )
    left_out = index[~index["image"].isin(present)]
    if not left_out.empty:
        examples = ", ".join(f"{well} site {site}" for well, site in left_out[["well", "site"]].head(5).itertuples(index=False))
        (log or logging.getLogger(__name__)).warning(
            "LoadData %s: %d of %d site(s) LEFT OUT because an image of theirs in channel(s) %s was rejected at "
            "ingest (see rejects/<channel>.csv; CellProfiler needs every channel of a row), e.g. %s",
            dst_path, len(left_out), len(index), ", ".join(channels), examples,
        )
    for channel in channels:
        folder = out_dir[channel] if isinstance(out_dir, Mapping) else out_dir
        paths = exported_paths(index, channel, folder, layout)
        files = [paths[image].resolve() for image in sites["image"]]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(
                f"write_loaddata_csv: {len(missing)} exported {channel} file(s) are missing, e.g. {missing[0]}; "
                "run export_tiffs for that channel first"
            )
        if source_table is None:
            table[f"FileName_Orig{channel}"] = [file.name for file in files]
            table[f"PathName_Orig{channel}"] = [str(file.parent) for file in files]
        else:
            _replace_channel_columns(table, channel, files, source_table)
    table = table.reset_index(drop=True)
    with atomic_output(dst_path) as temporary:
        table.to_csv(temporary, index=False)
    return table


def _replace_channel_columns(table: pd.DataFrame, channel: str, files: list[Path], source_table) -> None:
    """Point the source table's columns of ``channel`` at ``files`` (in place)."""
    column = {kind: find_loaddata_column(table.columns, f"{kind}_Orig{channel}") for kind in ("FileName", "PathName", "URL", "Series", "Frame")}
    replaced = False
    if column["FileName"] and column["PathName"]:
        table[column["FileName"]] = [file.name for file in files]
        table[column["PathName"]] = [str(file.parent) for file in files]
        replaced = True
    if column["URL"]:
        table[column["URL"]] = [file.as_uri() for file in files]
        replaced = True
    if not replaced:
        raise ValueError(f"{source_table} has no FileName_Orig{channel} + PathName_Orig{channel} or URL_Orig{channel} column")
    for kind in ("Series", "Frame"):
        if column[kind]:
            table[column[kind]] = "0"
