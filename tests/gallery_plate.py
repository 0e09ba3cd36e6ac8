"""A tiny plate laid out like the Cell Painting Gallery's cpg0016-jump, with its LoadData table.

Images live under ``cpg0016-jump/source_4/images/<batch>/images/<plate folder>/Images/`` (the plate
folder has a space, as some do), illumination functions under ``.../illum/<plate>/``; the table
(``load_data_with_illum``) has the Gallery's columns: many ``Metadata_*``, ``FileName_Orig*`` /
``PathName_Orig*`` for the stains and a Brightfield plane, ``FileName_Illum*`` / ``PathName_Illum*``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

BUCKET = "cellpainting-gallery"
SOURCE = "cpg0016-jump/source_4"
BATCH = "2021_07_12_Batch8"
STAINS = {"DNA": 5, "Mito": 1}  # Phenix channel numbers, as in the JUMP tables
BRIGHTFIELD = 6
SITES = [("A01", 1), ("A01", 2), ("B02", 1), ("B02", 2)]


def plate_folder(plate: str) -> str:
    return f"{SOURCE}/images/{BATCH}/images/{plate}__2021-07-17T15_13_21-Measurement 1/Images"


def table_key(plate: str, suffix: str = ".csv.gz") -> str:
    return f"{SOURCE}/workspace/load_data_csv/{BATCH}/{plate}/load_data_with_illum{suffix}"


def write_plate(root: Path, plate: str, *, seed: int = 0, size: int = 64) -> list[str]:
    """Write the plate's images and illumination functions under ``root`` (bucket layout); return their keys."""
    rng = np.random.default_rng(seed)
    keys = []
    for well, site in SITES:
        row, column = ord(well[0]) - ord("A") + 1, int(well[1:])
        for channel_number in [*STAINS.values(), BRIGHTFIELD]:
            key = f"{plate_folder(plate)}/r{row:02d}c{column:02d}f{site:02d}p01-ch{channel_number}sk1fk1fl1.tiff"
            pixels = rng.poisson(100 + 40 * channel_number, size=(size, size)).astype(np.uint16)
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / key, pixels, compression="zlib")
            keys.append(key)
    for stain in [*STAINS, "Brightfield"]:
        key = f"{SOURCE}/images/{BATCH}/illum/{plate}/{plate}_Illum{stain}.npy"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / key, np.ones((size, size), dtype=np.float32))
        keys.append(key)
    return keys


def load_data_table(plate: str, prefix: str) -> pd.DataFrame:
    """The plate's load_data_with_illum table with every path under ``prefix`` (s3://bucket/ or a folder/)."""
    rows = []
    for well, site in SITES:
        row, column = ord(well[0]) - ord("A") + 1, int(well[1:])
        record = {
            "Metadata_Source": "source_4", "Metadata_Batch": BATCH, "Metadata_Plate": plate,
            "Metadata_Well": well, "Metadata_Site": str(site), "Metadata_Row": str(row), "Metadata_Col": str(column),
            "Metadata_FieldID": str(site), "Metadata_PlaneID": "1", "Metadata_ImageSizeX": "64",
            "Metadata_ImageSizeY": "64", "Metadata_BinningX": "2", "Metadata_ImageResolutionX": "6.5e-07",
        }
        for stain, number in [*STAINS.items(), ("Brightfield", BRIGHTFIELD)]:
            record[f"Metadata_ChannelName_Orig{stain}"] = stain
            record[f"FileName_Orig{stain}"] = f"r{row:02d}c{column:02d}f{site:02d}p01-ch{number}sk1fk1fl1.tiff"
            record[f"PathName_Orig{stain}"] = prefix + plate_folder(plate)
        for stain in [*STAINS, "Brightfield"]:
            record[f"FileName_Illum{stain}"] = f"{plate}_Illum{stain}.npy"
            record[f"PathName_Illum{stain}"] = f"{prefix}{SOURCE}/images/{BATCH}/illum/{plate}"
        rows.append(record)
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)  # .csv.gz is gzipped from the suffix
    return path


def upload(client, root: Path, keys) -> None:
    for key in keys:
        client.upload_file(str(root / key), BUCKET, key)
