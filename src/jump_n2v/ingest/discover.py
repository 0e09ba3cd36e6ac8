"""Build a plate's image index (one row per site) from file names or a LoadData table, without reading pixels.

This runs when the workflow is planned, once per plate, so it only globs a pattern, lists a folder
or reads a CSV. Whether each file exists and is a usable image is decided later by the split, where a
bad image can be skipped and reported instead of stopping the whole plan.

Index columns: ``image`` (0..n-1), ``plate``, ``well`` ("A01"), ``site`` (int), ``source_<CH>`` per
channel (the file holding that channel; the same file for every channel of a hyperstack; "" when the
LoadData row names no file). Rows are sorted by well row, well column, then site. A LoadData plate's
index also has ``load_data_row``: the site's row in its table (0-based position among the table's data
rows), which the export uses to write that same row back with the denoised channels' files.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import posixpath
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.settings import IngestSettings
from jump_n2v.plumbing.storage import (
    StorageError,
    fingerprint,
    is_remote,
    join,
    list_objects,
    map_path,
    read_bytes,
    storage_settings,
)
from jump_n2v.plumbing.wells import normalise_well, parse_well, well_name

SOURCE_PREFIX = "source_"
INDEX_COLUMNS = ("image", "plate", "well", "site")
LOAD_DATA_ROW = "load_data_row"
# Harmony (Phenix/Operetta) export names: row, column, field, plane, channel, timepoint(sk), fk, fl.
PHENIX_NAME = re.compile(
    r"^r(?P<row>\d+)c(?P<column>\d+)f(?P<site>\d+)p(?P<plane>\d+)-ch(?P<ch>\d+)sk\d+fk\d+fl\d+\.tiff?$",
    re.IGNORECASE,
)
PATTERN_FIELD = re.compile(r"\{([^{}]*)\}")
FIELD_REGEX = {"well": r"[A-Za-z]{1,2}\d{1,3}", "site": r"\d+"}


class DiscoveryError(ValueError):
    """The plate's files or LoadData table cannot be turned into an image index; the message says why."""


def source_column(channel: str) -> str:
    return f"{SOURCE_PREFIX}{channel}"


def discover_plate(
    plate: str,
    plate_cfg: Mapping,
    channels: Sequence[str],
    *,
    ground_truth: bool = False,
    ingest: Mapping | None = None,
) -> pd.DataFrame:
    """The image index of ``plate`` as configured by ``plate_cfg`` (format hyperstack, loaddata or phenix).

    With ``ground_truth=True`` the plate's ``ground_truth`` entry (same layout as the raw images:
    a pattern, a LoadData table or a Phenix folder) is indexed instead. ``ingest`` is the resolved
    ingest settings of the experiment (``phenix_plane``, and ``on_bad_image`` for a LoadData row whose
    path cell is empty; None means the defaults).

    A LoadData table's image paths are its own text with the plate's ``path_map`` applied first; a
    path that is still relative is then taken relative to the plate's ``base_folder`` (default: the
    folder of the table). A row naming a file in an empty ``PathName_Orig*`` cell is an error naming
    the row and column (with ``on_bad_image: skip`` the row has no file for that channel, and its
    split rejects the image), never a file looked up beside the table.
    """
    channels = list(channels)
    if not channels:
        raise DiscoveryError(f"plate {plate}: no channels given")
    fmt = plate_cfg.get("format")
    key = {"hyperstack": "pattern", "loaddata": "load_data", "phenix": "directory"}.get(fmt)
    if key is None:
        raise DiscoveryError(f"plate {plate}: unknown format {fmt!r}; expected hyperstack, loaddata or phenix")
    location = plate_cfg.get("ground_truth") if ground_truth else plate_cfg.get(key)
    if not location:
        what = "ground_truth" if ground_truth else key
        raise DiscoveryError(f"plate {plate}: format {fmt} needs '{what}' in the plate's configuration")
    if fmt == "hyperstack":
        sites = _hyperstack_sites(plate, str(location), channels)
    elif fmt == "loaddata":
        location = map_path(str(location), plate_cfg.get("path_map"))
        skip = IngestSettings.from_dict(ingest).on_bad_image == "skip"
        sites = _loaddata_sites(plate, location, channels, plate_cfg, skip=skip)
    else:
        plane = IngestSettings.from_dict(ingest).phenix_plane
        sites = _phenix_sites(plate, str(location), channels, plate_cfg.get("channel_numbers") or {}, plane)
    return _finish_index(plate, sites, channels, str(location))


def write_index(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the index CSV atomically (a reader never sees half a table)."""
    with atomic_output(path) as temporary:
        table.to_csv(temporary, index=False)


def read_index(path: str | os.PathLike, channels: Sequence[str] = ()) -> pd.DataFrame:
    """Read an index CSV written by ``write_index`` with its column types (well as text, "" kept as "").

    ``channels`` names channels whose ``source_<CH>`` column must be present. This is the one reader
    of index tables; every stage that needs the index goes through it.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DiscoveryError(f"cannot read image index {path}: {error}") from error
    missing = [column for column in [*INDEX_COLUMNS, *map(source_column, channels)] if column not in table.columns]
    if missing:
        raise DiscoveryError(f"{path}: not an image index of these channels, missing column(s) {missing}; it has {list(table.columns)}")
    duplicated = table.loc[table["image"].duplicated(), "image"].tolist()[:5]
    if duplicated:
        raise DiscoveryError(f"{path}: image(s) {duplicated} listed more than once")
    table["image"] = table["image"].astype(int)
    table["site"] = table["site"].astype(int)
    if LOAD_DATA_ROW in table.columns:
        table[LOAD_DATA_ROW] = table[LOAD_DATA_ROW].astype(int)
    return table


def channel_sources(table: pd.DataFrame, channel: str, *, existing_only: bool = False) -> list[str]:
    """Unique source files (or s3:// URLs) of ``channel`` in index order.

    ``existing_only`` keeps the local files that exist (the split rule's inputs): a workflow should
    report missing files as rejected images (on_bad_image: skip) rather than refuse to run, and s3
    objects are followed by ``remote_source_fingerprints`` instead.
    """
    column = source_column(channel)
    if column not in table.columns:
        raise DiscoveryError(f"the index has no channel {channel!r}; channels: {index_channels(table)}")
    sources = [path for path in dict.fromkeys(map(source_path, table[column].tolist())) if path]
    if existing_only:
        sources = [path for path in sources if not is_remote(path) and os.path.isfile(path)]
    return sources


def remote_source_fingerprints(table: pd.DataFrame, storage: Mapping) -> dict[str, str]:
    """``channel -> digest`` of the ETag, size and modification time of the channel's s3 sources.

    The plate's objects are listed folder by folder (one LIST request per 1,000 objects of a
    folder, never one request per object), so planning a 3,456-site plate stays cheap. A changed,
    added or vanished object changes its channel's digest only; a channel without s3 sources gets "".
    """
    channels = index_channels(table)
    remote = {channel: [path for path in channel_sources(table, channel) if is_remote(path)] for channel in channels}
    urls = [url for paths in remote.values() for url in paths]
    listed = list_objects(urls, storage) if urls else {}
    return {channel: fingerprint((url, listed[url]) for url in paths) if paths else "" for channel, paths in remote.items()}


def source_path(value) -> str:
    """A source cell as a path, "" when there is none (pd.read_csv turns empty cells into NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def index_channels(table: pd.DataFrame) -> list[str]:
    return [column[len(SOURCE_PREFIX):] for column in table.columns if column.startswith(SOURCE_PREFIX)]


def well_from_row_column(row: int, column: int) -> str:
    """Phenix r01c01 -> 'A01'; rows past Z continue AA, AB ... (1536-well plates have 32 rows)."""
    if row < 1 or column < 1:
        raise ValueError(f"row {row} / column {column}: both start at 1")
    return well_name(row - 1, column - 1)


# ---------------------------------------------------------------- hyperstack: one file per site


def _hyperstack_sites(plate: str, pattern: str, channels: Sequence[str]) -> list[dict]:
    glob_pattern, regex = _compile_pattern(pattern, plate)
    matches = glob.glob(glob_pattern)
    sites = []
    for path in matches:
        match = regex.fullmatch(path)
        if match is None:
            continue  # the glob's '*' is looser than the field syntax (e.g. 'A01_s1_old.tif')
        try:
            well = normalise_well(match.group("well"))
        except ValueError:
            continue
        row = {"well": well, "site": int(match.group("site"))}
        row.update({source_column(channel): path for channel in channels})
        sites.append(row)
    if not sites:
        detail = (
            f"; {len(matches)} file(s) match the glob but not the fields, e.g. {sorted(matches)[0]}"
            if matches
            else ""
        )
        raise DiscoveryError(
            f"plate {plate}: pattern {pattern!r} (glob {glob_pattern!r}, relative to {os.getcwd()}) "
            f"matched no files{detail}"
        )
    return sites


def _compile_pattern(pattern: str, plate: str) -> tuple[str, re.Pattern]:
    """Glob and regex for a pattern with {well}, {site} and optionally {plate}; other text is literal."""
    pieces = PATTERN_FIELD.split(pattern)
    glob_parts, regex_parts, seen = [], [], set()
    for position, piece in enumerate(pieces):
        if position % 2 == 0:
            glob_parts.append(glob.escape(piece))
            regex_parts.append(re.escape(piece))
        elif piece == "plate":
            glob_parts.append(glob.escape(plate))
            regex_parts.append(re.escape(plate))
        elif piece in FIELD_REGEX:
            glob_parts.append("*")
            regex_parts.append(f"(?P={piece})" if piece in seen else f"(?P<{piece}>{FIELD_REGEX[piece]})")
            seen.add(piece)
        else:
            raise DiscoveryError(
                f"pattern {pattern!r}: unknown field {{{piece}}}; allowed fields are {{plate}}, {{well}}, {{site}}"
            )
    missing = {"well", "site"} - seen
    if missing:
        raise DiscoveryError(f"pattern {pattern!r} lacks the field(s) {', '.join('{' + m + '}' for m in sorted(missing))}")
    return "".join(glob_parts), re.compile("".join(regex_parts))


# ---------------------------------------------------------------- LoadData: one file per channel per site


def read_table(path: str | os.PathLike, storage: Mapping | None = None) -> pd.DataFrame:
    """A LoadData table from .csv, .csv.gz or .parquet, every column as text ('' for empty cells).

    ``path`` may be an s3:// URL, read with the plate's ``storage`` settings (None: the defaults).
    """
    if is_remote(path):
        try:
            source = io.BytesIO(read_bytes(str(path), storage_settings({"storage": storage})))
        except StorageError as error:
            raise DiscoveryError(f"cannot read LoadData table {path}: {error.problem}") from error
        suffixes = [suffix.lower() for suffix in Path(str(path)).suffixes]
    else:
        path = Path(path)
        if not path.is_file():
            raise DiscoveryError(f"LoadData table {path} does not exist")
        source, suffixes = path, [suffix.lower() for suffix in path.suffixes]
    compression = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".xz": "xz"}.get(suffixes[-1] if suffixes else "")
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            table = pd.read_parquet(source)
            table = table.astype(object).where(table.notna(), "").astype(str)
        else:
            table = pd.read_csv(source, dtype=str, keep_default_na=False, compression=compression)
    except Exception as error:
        raise DiscoveryError(f"cannot read LoadData table {path}: {type(error).__name__}: {error}") from error
    table.columns = [str(column).strip() for column in table.columns]
    return table.reset_index(drop=True)


def _loaddata_sites(plate: str, csv_path: str, channels: Sequence[str], plate_cfg: Mapping, *, skip: bool) -> list[dict]:
    table = read_table(csv_path, plate_cfg.get("storage"))
    for column in ("Metadata_Well", "Metadata_Site"):
        if column not in table.columns:
            raise DiscoveryError(f"LoadData table {csv_path} has no {column} column; columns: {list(table.columns)}")
    if "Metadata_Plate" in table.columns:
        plates = table["Metadata_Plate"].str.strip()
        selected = table[plates == plate]
        if selected.empty:
            present = sorted(set(plates))
            raise DiscoveryError(
                f"LoadData table {csv_path} has no rows for plate {plate!r}; its Metadata_Plate values are "
                f"{present[:20]}{' ...' if len(present) > 20 else ''}"
            )
        table = selected
    if table.empty:
        raise DiscoveryError(f"LoadData table {csv_path} has no rows")
    base = plate_cfg.get("base_folder") or (csv_path.rsplit("/", 1)[0] if is_remote(csv_path) else os.path.dirname(csv_path))
    sites = {"well": [], "site": []}
    for row_number, (well, site) in enumerate(zip(table["Metadata_Well"], table["Metadata_Site"])):
        try:
            sites["well"].append(normalise_well(well))
            sites["site"].append(int(float(site)))
        except ValueError:
            raise DiscoveryError(
                f"LoadData table {csv_path}, data row {table.index[row_number] + 1}: well {well!r} / site "
                f"{site!r} is not a well like A01 and a whole site number"
            ) from None
    sites[LOAD_DATA_ROW] = [int(position) for position in table.index]
    for channel in channels:
        sites[source_column(channel)] = _channel_paths(table, channel, csv_path, base, plate_cfg.get("path_map"), skip)
    return [dict(zip(sites, values)) for values in zip(*sites.values())]


def find_loaddata_column(columns: Iterable[str], wanted: str, csv_path: str = "") -> str | None:
    """Exact column name, else a unique case-insensitive match (OrigBrightField vs OrigBrightfield);
    several case-insensitive matches are an error naming them."""
    columns = list(columns)
    if wanted in columns:
        return wanted
    folded = [column for column in columns if column.casefold() == wanted.casefold()]
    if len(folded) > 1:
        raise DiscoveryError(
            f"LoadData table {csv_path}: column {wanted} is ambiguous: {' and '.join(folded)} differ only in case"
        )
    return folded[0] if folded else None


def _channel_paths(
    table: pd.DataFrame, channel: str, csv_path: str, base: str, path_map: Mapping | None, skip: bool
) -> list[str]:
    """The channel's file per row: the table's text, path_map applied, then resolved against ``base``."""
    file_column = find_loaddata_column(table.columns, f"FileName_Orig{channel}", csv_path)
    path_column = find_loaddata_column(table.columns, f"PathName_Orig{channel}", csv_path)
    url_column = find_loaddata_column(table.columns, f"URL_Orig{channel}", csv_path)
    if file_column and path_column:
        paths = []
        for row_number, folder, name in zip(table.index, table[path_column], table[file_column]):
            folder, name = folder.strip(), name.strip()
            if name and not folder:
                if not skip:
                    raise DiscoveryError(
                        f"LoadData table {csv_path}, data row {row_number + 1}, column {path_column}: empty, "
                        f"while {file_column} names {name!r}; every file needs its folder (ingest on_bad_image: "
                        "skip would leave the image out and list it in the rejects table)"
                    )
                name = ""  # no file for this channel: the split rejects the image
            paths.append(_resolve(map_path(join(folder, name), path_map), base, csv_path) if name else "")
        return paths
    if url_column:
        return [
            _url_to_path(map_path(url.strip(), path_map), base, csv_path) if url.strip() else ""
            for url in table[url_column]
        ]
    image_columns = [c for c in table.columns if c.split("_", 1)[0] in ("FileName", "PathName", "URL")]
    raise DiscoveryError(
        f"LoadData table {csv_path} has no FileName_Orig{channel} + PathName_Orig{channel} or URL_Orig{channel} "
        f"column for channel {channel!r}; its image columns are {image_columns or list(table.columns)}"
    )


def _url_to_path(url: str, base: str, csv_path: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DiscoveryError(f"LoadData table {csv_path}: {url} is on another host; only local files are read")
        return os.path.normpath(urllib.request.url2pathname(parsed.path))
    if parsed.scheme.lower() == "s3":
        return url
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise DiscoveryError(
            f"LoadData table {csv_path}: {parsed.scheme}:// URLs are not supported ({url}); only local paths "
            "and s3:// (or a path_map from the URL's prefix to a local mirror)"
        )
    return _resolve(url, base, csv_path)


def _resolve(path: str, base: str, csv_path: str) -> str:
    if is_remote(path):
        return path
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", path):
        scheme = path.split(":", 1)[0]
        raise DiscoveryError(
            f"LoadData table {csv_path}: {scheme}:// paths are not supported ({path}); only local paths and "
            "s3:// (or a path_map from the path's prefix to a local mirror)"
        )
    if is_remote(base) and not os.path.isabs(path):
        bucket_and_folder = base[len("s3://"):]
        return "s3://" + posixpath.normpath(posixpath.join(bucket_and_folder, path))
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


# ---------------------------------------------------------------- Phenix / Harmony file names


def _phenix_sites(
    plate: str, directory: str, channels: Sequence[str], channel_numbers: Mapping, plane: int
) -> list[dict]:
    missing = [channel for channel in channels if channel not in channel_numbers]
    if missing:
        raise DiscoveryError(f"plate {plate}: channel_numbers has no ch number for channel(s) {missing}")
    wanted = {int(channel_numbers[channel]): channel for channel in channels}
    folder = directory
    if not os.path.isdir(folder):
        raise DiscoveryError(f"plate {plate}: Phenix directory {directory} does not exist")
    names = os.listdir(folder)
    if not any(PHENIX_NAME.match(name) for name in names) and os.path.isdir(os.path.join(folder, "Images")):
        folder = os.path.join(folder, "Images")  # Harmony exports put the TIFFs in an Images/ subfolder
        names = os.listdir(folder)
    sites: dict[tuple[str, int], dict] = {}
    planes_seen = set()
    for name in names:
        match = PHENIX_NAME.match(name)
        if match is None:
            continue
        planes_seen.add(int(match.group("plane")))
        channel = wanted.get(int(match.group("ch")))
        if channel is None or int(match.group("plane")) != plane:
            continue
        well = well_from_row_column(int(match.group("row")), int(match.group("column")))
        site = int(match.group("site"))
        row = sites.setdefault((well, site), {"well": well, "site": site})
        column = source_column(channel)
        path = os.path.join(folder, name)
        if column in row:
            raise DiscoveryError(
                f"plate {plate}: two files for well {well} site {site} channel {channel} (plane {plane}): "
                f"{row[column]} and {path}"
            )
        row[column] = path
    if not sites:
        detail = f"planes present: {sorted(planes_seen)}" if planes_seen else "no file is named like r01c01f01p01-ch1sk1fk1fl1.tiff"
        raise DiscoveryError(
            f"plate {plate}: no Phenix images for channels {dict(sorted(wanted.items()))} plane p{plane:02d} "
            f"in {folder} ({detail})"
        )
    for row in sites.values():
        for channel in channels:
            row.setdefault(source_column(channel), "")  # the split reports the missing file as a bad image
    return list(sites.values())


# ---------------------------------------------------------------- common


def _finish_index(plate: str, sites: list[dict], channels: Sequence[str], location: str) -> pd.DataFrame:
    extra = [LOAD_DATA_ROW] if sites and LOAD_DATA_ROW in sites[0] else []
    table = pd.DataFrame(sites, columns=["well", "site", *extra, *map(source_column, channels)])
    duplicated = table[table.duplicated(["well", "site"], keep=False)]
    if not duplicated.empty:
        examples = []
        for (well, site), group in list(duplicated.groupby(["well", "site"], sort=False))[:3]:
            files = group[source_column(channels[0])].tolist()
            examples.append(f"well {well} site {site}: {files}")
        raise DiscoveryError(
            f"plate {plate} ({location}): {duplicated[['well', 'site']].drop_duplicates().shape[0]} (well, site) "
            f"pair(s) appear more than once, e.g. " + "; ".join(examples)
        )
    keys = [(*parse_well(well), site) for well, site in zip(table["well"], table["site"])]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "plate", plate)
    table.insert(0, "image", range(len(table)))
    table["site"] = table["site"].astype(int)
    return table


def ground_truth_index(raw_index: pd.DataFrame, plate: str, plate_cfg: Mapping, channels: Sequence[str], *, ingest: Mapping | None = None) -> pd.DataFrame:
    """The clean reference's index with the raw index's ``image`` ids, paired by (well, site).

    Sites without a reference are left out; a reference site missing from the raw plate is an error,
    since nothing could be compared with it.
    """
    clean = discover_plate(plate, plate_cfg, channels, ground_truth=True, ingest=ingest).drop(columns="image")
    ids = raw_index[["well", "site", "image"]]
    paired = clean.merge(ids, on=["well", "site"], how="left", validate="one_to_one")
    unmatched = paired[paired["image"].isna()]
    if not unmatched.empty:
        examples = ", ".join(f"{w} site {s}" for w, s in unmatched[["well", "site"]].head(3).itertuples(index=False))
        raise DiscoveryError(f"plate {plate}: ground truth {plate_cfg.get('ground_truth')} has sites the raw plate lacks: {examples}")
    paired["image"] = paired["image"].astype(int)
    return paired[["image", *(c for c in paired.columns if c != "image")]].sort_values("image").reset_index(drop=True)


# ---------------------------------------------------------------- which files a plate has


def listing_digest(plate: str, plate_cfg: Mapping) -> str | None:
    """A digest of the sorted names of the files a hyperstack or Phenix plate (and its ground truth)
    would be indexed from, or None for a LoadData plate (its table is a file the index depends on).

    It only globs or lists folders, so it is cheap enough to compute every time the workflow is
    planned; a site file added or removed changes it, which reruns the plate's index.
    """
    fmt = plate_cfg.get("format")
    if fmt not in ("hyperstack", "phenix"):
        return None
    names: list[str] = []
    for location in (plate_cfg.get("pattern" if fmt == "hyperstack" else "directory"), plate_cfg.get("ground_truth")):
        if not location:
            continue
        if fmt == "hyperstack":
            glob_pattern, _ = _compile_pattern(str(location), plate)
            names += sorted(glob.glob(glob_pattern))
        else:
            for folder in (str(location), os.path.join(str(location), "Images")):
                if os.path.isdir(folder):
                    names += sorted(os.path.join(folder, name) for name in os.listdir(folder) if PHENIX_NAME.match(name))
        names.append("")  # separates the raw listing from the ground truth's
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def check_patch_fits(sources: Sequence[str], patch_size: int, where: str) -> None:
    """Raise DiscoveryError when the first readable source image is smaller than the training
    ``patch_size``, so the plate stops once its index exists instead of after its split.

    Only the first image's TIFF header is read (planning must stay cheap on a 17,280-file plate); a
    later image of another size is named by its split (it differs from the plate's majority), and a
    majority smaller than the patches by training. Files that cannot be read are left to the split."""
    from jump_n2v.ingest.readers import BadImageError, plane_size

    for path in sources[:1]:
        try:
            height, width = plane_size(path)
        except BadImageError:
            return
        if height < patch_size or width < patch_size:
            raise DiscoveryError(
                f"{where}: images are {height}x{width} pixels ({path}), smaller than the n2v patch_size "
                f"{patch_size}; lower n2v.patch_size to at most {min(height, width)} (a multiple of 2**depth)"
            )
