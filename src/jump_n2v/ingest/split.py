"""Split one channel of a plate into a Zarr v3 array (images x Y x X) in the source dtype.

Reading is the slow part (TIFF decoding, often LZW), so images are read by a thread pool — tifffile
and imagecodecs release the GIL — and the compressed chunks are written by the same pool. At most a
fixed number of images are in flight (being read, waiting for their turn, or being written), so
memory does not grow with the plate. Array rows follow the index order; a skipped image leaves no row.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numcodecs
import numpy as np
import pandas as pd

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.plumbing.dtypes import integer_range
from jump_n2v.settings import IngestSettings
from jump_n2v.ingest.discover import LOAD_DATA_ROW, source_column, source_path
from jump_n2v.ingest.readers import BadImageError, ChannelImage, read_channel
from jump_n2v.plumbing.ngff import CHANNEL_CODEC, create_channel_array, open_channel_array, set_channel_attributes
from jump_n2v.plumbing.storage import is_remote, storage_settings

logger = logging.getLogger(__name__)

REJECT_COLUMNS = ["plate", "channel", "image", "well", "site", "file", "problem"]
# Images up to this side are one chunk (one read per image for training and prediction); the bound
# keeps 2160 px binning-1 Phenix images whole. Larger images are cut into near-equal tiles <= 1024.
WHOLE_IMAGE_MAX_SIDE = 2304
MAX_TILE_SIDE = 1024
# Blosc LZ4 with byte shuffle, the channel stores' codec (jump_n2v.plumbing.ngff.CHANNEL_CODEC): measured on noisy
# 1080x1080 uint16 cell images it compresses to ~1.5-1.9x (better than the sources' LZW) at ~4 ms per
# image and decodes in ~1.5 ms, so neither this split nor the later readers wait on it (zstd level 1:
# similar size, 2-3x the encode and decode time; benchmarks/bench_codecs.py).
COMPRESSOR = CHANNEL_CODEC
PROGRESS_SECONDS = 5.0
IN_FLIGHT_PER_THREAD = 2


def chunk_shape(height: int, width: int) -> tuple[int, int, int]:
    """(1, Y, X) for ordinary images, else (1, tile, tile) with tiles splitting each side evenly."""
    if max(height, width) <= WHOLE_IMAGE_MAX_SIDE:
        return 1, height, width

    def tile(side: int) -> int:
        return math.ceil(side / math.ceil(side / MAX_TILE_SIDE))

    return 1, tile(height), tile(width)


def split_channel(
    index: pd.DataFrame,
    channel: str,
    *,
    experiment: str,
    plate: str,
    plate_cfg: Mapping,
    channel_order: Sequence[str] | None,
    ingest: Mapping | None,
    out_zarr: str | os.PathLike,
    rejects_csv: str | os.PathLike,
    failed_rejects_csv: str | os.PathLike | None = None,
    threads: int = 2,
    log: Callable[[str], Any] | logging.Logger | None = None,
) -> dict:
    """Write ``channel`` of every image in ``index`` to ``out_zarr`` and the rejected images to ``rejects_csv``.

    ``ingest`` is the resolved ingest settings (missing keys take the schema defaults). With
    on_bad_image "fail" the first bad image raises BadImageError naming the file and the problem;
    with "skip" it is left out and listed in the rejects table (written always, maybe empty).
    Shape and dtype must match the plate's majority (shape, dtype) among its readable images, so an
    odd first image cannot make every good one look wrong. Rejecting more than ``max_rejected_fraction``
    of the images fails the split (after writing the rejects table) rather than train on what is left.
    ``failed_rejects_csv`` is where a failed split writes its rejects table instead, when ``rejects_csv``
    would not survive the failure (Snakemake deletes a failed job's outputs); the error names it.
    Progress lines go to ``log`` (a logging.Logger or any callable taking a string). Returns a summary
    (counts, shape, throughput).
    """
    split = _ChannelSplit(
        index, channel, experiment=experiment, plate=plate, plate_cfg=plate_cfg, channel_order=channel_order,
        ingest=ingest, failed_rejects_csv=failed_rejects_csv or rejects_csv, threads=threads, log=log,
    )
    with atomic_output(out_zarr) as temporary:
        temporary.mkdir()
        split.read_and_write_images(temporary)
        majority = split.keep_majority()
        split.write_array(temporary, majority)
    _write_rejects(split.rejects, rejects_csv)
    return split.summary(majority)


class _ChannelSplit:
    """One run of :func:`split_channel`: the rows to read, what has been read, kept and rejected, and the
    steps (set up, read and write, keep the majority, write the array, summary) as methods."""

    def __init__(
        self, index: pd.DataFrame, channel: str, *, experiment: str, plate: str, plate_cfg: Mapping,
        channel_order: Sequence[str] | None, ingest: Mapping | None, failed_rejects_csv: str | os.PathLike,
        threads: int, log: Callable[[str], Any] | logging.Logger | None,
    ) -> None:
        """Set up: check the index, list its (image, well, site, file) rows and size the thread pool."""
        self.settings = IngestSettings.from_dict(ingest)
        self.log = log.info if isinstance(log, logging.Logger) else (log or logger.info)
        self.channel, self.experiment, self.plate, self.plate_cfg = channel, experiment, plate, plate_cfg
        self.failed_rejects_csv = failed_rejects_csv  # where a failed split lists its rejects
        self.rows = _index_rows(index, channel, plate)
        self.table_rows = (
            dict(zip(index["image"].astype(int), index[LOAD_DATA_ROW])) if LOAD_DATA_ROW in index.columns else {}
        )
        self.storage = storage_settings(plate_cfg)
        self.threads = max(1, int(threads))
        if any(is_remote(row[3]) for row in self.rows):
            # Downloads wait on the network, not the CPU: keep 'concurrency' requests in flight.
            self.threads = max(self.threads, int(self.storage["concurrency"]))
        self.max_in_flight = IN_FLIGHT_PER_THREAD * self.threads + 1
        self.skip = self.settings.on_bad_image == "skip"
        # channel_order describes hyperstacks; LoadData and Phenix files hold one channel each.
        self.file_channel_order = channel_order if plate_cfg.get("format") == "hyperstack" else None
        self.rejects: list[dict] = []
        # Good images are written as they arrive, one array per (shape, dtype) seen, inside the temporary
        # store; the majority's array becomes the output and the other groups' images are rejected.
        self.groups: dict[tuple, _Group] = {}
        self.done = 0
        self.bytes_done = 0
        self.started = self.last_report = time.monotonic()

    def read(self, path: str) -> ChannelImage | BadImageError:
        """The channel's image in file ``path``, or the BadImageError saying why it is unusable (runs on the pool)."""
        try:
            if not path:
                raise BadImageError(None, f"the index lists no file for channel {self.channel}")
            return read_channel(
                path,
                self.channel,
                channel_order=self.file_channel_order,
                z_projection=self.settings.z_projection,
                z_plane=self.settings.z_plane,
                time_point=self.settings.time_point,
                storage=self.storage,
            )
        except BadImageError as error:
            return error

    def read_and_write_images(self, temporary: Path) -> None:
        """Read every image on the pool and write each good one into its group's array, with at most
        ``max_in_flight`` images read, waiting or being written at once, so memory stays bounded."""
        rows = self.rows
        pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix=f"split-{self.channel}")
        try:
            reads: collections.deque = collections.deque()
            writes: set[concurrent.futures.Future] = set()
            next_row = 0
            while next_row < len(rows) or reads:
                while next_row < len(rows) and len(reads) + len(writes) < self.max_in_flight:
                    reads.append((rows[next_row], pool.submit(self.read, rows[next_row][3])))
                    next_row += 1
                if not reads:  # every slot holds a write: let one finish
                    _collect(writes, block=True)
                    continue
                row, future = reads.popleft()
                self.take_image(row, future.result(), temporary, pool, writes)
                _collect(writes, block=False)
                self.report_progress()
            while writes:
                _collect(writes, block=True)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def take_image(self, row, result: ChannelImage | BadImageError, temporary: Path, pool, writes: set) -> None:
        """Reject a bad image, or queue a good one's write into the array of its (shape, dtype) group."""
        self.done += 1
        if isinstance(result, BadImageError):
            self.reject(row, result)
            return
        pixels = result.pixels
        key = (pixels.shape, pixels.dtype.str)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(
                temporary / f"group-{len(self.groups)}", len(self.rows), pixels.shape, pixels.dtype,
                result.pixel_size_um,
            )
        writes.add(pool.submit(group.write, len(group), pixels))
        group.rows.append(row)
        self.bytes_done += pixels.nbytes
        self.fail_on_certain_minority()

    def reject(self, row, error: BadImageError) -> None:
        """List the image in the rejects table (on_bad_image skip), or raise the error with where it sits."""
        image, well, site, path = row
        if not self.skip:
            # The row's number as a spreadsheet shows it below the header (1 = first data row).
            table_row = (
                f"LoadData table data row {int(self.table_rows[image]) + 1}, " if image in self.table_rows else ""
            )
            raise BadImageError(
                error.path or path,
                f"{error.problem} ({table_row}plate {self.plate}, channel {self.channel}, well {well} site {site}; "
                "ingest on_bad_image: skip would leave it out and list it in the rejects table)",
            ) from error
        self.rejects.append(
            {"plate": self.plate, "channel": self.channel, "image": image, "well": well, "site": site,
             "file": error.path or path, "problem": error.problem}
        )

    def fail_on_certain_minority(self) -> None:
        """With on_bad_image fail, stop as soon as some group holds most of the plate's images."""
        if self.skip or len(self.groups) < 2:
            return
        majority = max(self.groups.values(), key=len)
        if len(majority) * 2 > len(self.rows):
            odd = next(group for group in self.groups.values() if group is not majority)
            self.reject(odd.rows[0], BadImageError(odd.rows[0][3], _mismatch(odd, majority, len(self.rows))))

    def report_progress(self) -> None:
        """A progress line every PROGRESS_SECONDS: images done, throughput, rejects so far."""
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_SECONDS:
            self.last_report = now
            self.log(
                f"split {self.plate}/{self.channel}: {self.done}/{len(self.rows)} images, "
                f"{self.bytes_done / 1e6 / (now - self.started):.1f} MB/s, {len(self.rejects)} rejected"
            )

    def keep_majority(self) -> _Group:
        """The (shape, dtype) group most images share (ties: the first seen); the others' images are
        rejected, and too many rejects, or no usable image, fail the split after the rejects table is written."""
        rows, rejects = self.rows, self.rejects
        if not self.groups:
            _write_rejects(rejects, self.failed_rejects_csv)
            first = rejects[0]
            raise BadImageError(
                first["file"],
                f"no usable image for channel {self.channel} of plate {self.plate}: all {len(rows)} rejected "
                f"(listed in {self.failed_rejects_csv}); the first problem: {first['problem']}",
            )
        # Ties go to the group seen first (index order).
        majority = max(self.groups.values(), key=len)
        for group in self.groups.values():
            if group is not majority:
                for row in group.rows:
                    self.reject(row, BadImageError(row[3], _mismatch(group, majority, len(rows))))
        rejects.sort(key=lambda record: record["image"])
        allowed = self.settings.max_rejected_fraction
        if len(rejects) > allowed * len(rows):
            _write_rejects(rejects, self.failed_rejects_csv)
            examples = "; ".join(f"{record['file'] or '<no file>'}: {record['problem']}" for record in rejects[:3])
            raise BadImageError(
                rejects[0]["file"],
                f"{len(rejects)} of {len(rows)} images of channel {self.channel} of plate {self.plate} were rejected "
                f"({len(rejects) / len(rows):.1%}), more than ingest max_rejected_fraction {allowed:g} allows; "
                f"they are listed in {self.failed_rejects_csv}. First: {examples}",
            )
        return majority

    def write_array(self, temporary: Path, majority: _Group) -> None:
        """Make the majority's array the store itself (the other groups' arrays go), trimmed to the kept
        images, with the attributes downstream stages read."""
        for entry in list(majority.path.iterdir()):
            os.replace(entry, temporary / entry.name)
        for group in self.groups.values():
            shutil.rmtree(group.path)
        array = open_channel_array(temporary, mode="r+")
        kept_ids = [int(row[0]) for row in majority.rows]
        if len(kept_ids) < len(self.rows):
            array.resize((len(kept_ids), *majority.shape))
        set_channel_attributes(
            array,
            {
                "channel": self.channel,
                "plate": self.plate,
                "experiment": self.experiment,
                "image_ids": kept_ids,
                "source_format": self.plate_cfg.get("format"),
                "pixel_size_um": majority.pixel_size_um,
                "dtype_range": integer_range(majority.dtype),
            }
        )

    def summary(self, majority: _Group) -> dict:
        """The split's counts, shape and throughput, also logged as one line."""
        seconds = time.monotonic() - self.started
        kept = len(majority)
        summary = {
            "plate": self.plate,
            "channel": self.channel,
            "images": len(self.rows),
            "kept": kept,
            "rejected": len(self.rejects),
            "shape": [kept, *majority.shape],
            "dtype": str(majority.dtype),
            "seconds": round(seconds, 3),
            "mb_per_s": round(self.bytes_done / 1e6 / seconds, 1) if seconds > 0 else None,
            "images_per_s": round(len(self.rows) / seconds, 1) if seconds > 0 else None,
        }
        self.log(
            f"split {self.plate}/{self.channel}: {summary['kept']}/{summary['images']} images kept, "
            f"{summary['rejected']} rejected, {summary['mb_per_s']} MB/s"
        )
        return summary


def _index_rows(index: pd.DataFrame, channel: str, plate: str) -> list[tuple[int, str, int, str]]:
    """The (image, well, site, source file) of each index row for ``channel``; an error if there are none."""
    column = source_column(channel)
    if column not in index.columns:
        raise ValueError(f"plate {plate}: the index has no column {column} for channel {channel!r}")
    rows = [
        (int(image), str(well), int(site), source_path(path))
        for image, well, site, path in index[["image", "well", "site", column]].itertuples(index=False, name=None)
    ]
    if not rows:
        raise ValueError(f"plate {plate}: the index has no images")
    return rows


def _create_array(path, count: int, shape: tuple[int, int], dtype: np.dtype):
    return create_channel_array(
        path,
        shape=(count, *shape),
        chunks=chunk_shape(*shape),
        dtype=dtype,
        compressors=[COMPRESSOR],
        fill_value=0,
        # Skipping all-fill chunks costs zarr a full comparison per chunk (~15 ms for 1080x1080, more
        # than the compression); validated images are never constant, so always write.
        config={"write_empty_chunks": True},
    )


class _Group:
    """The images of one (shape, dtype), written as they arrive into their own array at ``path``."""

    def __init__(self, path: Path, count: int, shape: tuple[int, int], dtype: np.dtype, pixel_size_um) -> None:
        self.path, self.shape, self.dtype, self.pixel_size_um = path, shape, np.dtype(dtype), pixel_size_um
        self.write = _row_writer(_create_array(path, count, shape, dtype))
        self.rows: list[tuple] = []

    def __len__(self) -> int:
        return len(self.rows)


def _mismatch(group: _Group, majority: _Group, total: int) -> str:
    image, well, site, path = majority.rows[0]
    return (
        f"shape {group.shape} {group.dtype} differs from the plate's majority {majority.shape} {majority.dtype} "
        f"({len(majority)} of {total} images, e.g. image {image}, well {well} site {site}, {path})"
    )


def _row_writer(array) -> Callable[[int, np.ndarray], None]:
    """A function writing one image into row ``row`` of ``array``, safe to call from several threads.

    When an image is exactly one chunk (the usual case) the chunk is encoded here and written as
    the file zarr would write: zarr's synchronous API hands every write to its event-loop thread and
    to more threads for encoding and file I/O, which measured ~5 ms CPU per 1080x1080 image against
    ~1.5 ms done directly — a quarter of the split's cost. The chunk key comes from the array's own
    chunk key encoding, and Blosc frames carry their own type size and shuffle, so zarr reads these
    chunks like its own. Tiled images go through zarr, which cuts and pads the edge tiles.
    """
    codecs = array.metadata.codecs
    whole_image_chunks = tuple(array.chunks[1:]) == tuple(array.shape[1:])
    local = type(array.store_path.store).__name__ == "LocalStore"
    plain_blosc = [type(codec).__name__ for codec in codecs] == ["BytesCodec", "BloscCodec"] and getattr(
        codecs[0].endian, "value", None
    ) in (None, "little")
    if not (whole_image_chunks and local and plain_blosc):
        def write_through_zarr(row: int, pixels: np.ndarray) -> None:
            array[row] = pixels

        return write_through_zarr
    codec = codecs[1]
    shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
               "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[codec.shuffle.value]
    blosc = numcodecs.Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle, blocksize=codec.blocksize)
    root = Path(array.store_path.store.root) / array.store_path.path
    key_encoding = array.metadata.chunk_key_encoding
    zeros = (0,) * (len(array.shape) - 1)

    def write_chunk_file(row: int, pixels: np.ndarray) -> None:
        little_endian = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
        path = root / key_encoding.encode_chunk_key((row, *zeros))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blosc.encode(little_endian))

    return write_chunk_file


def _collect(writes: set, *, block: bool) -> None:
    """Drop finished writes (re-raising their errors); with ``block`` wait for at least one."""
    if block and writes:
        concurrent.futures.wait(writes, return_when=concurrent.futures.FIRST_COMPLETED)
    for future in [future for future in writes if future.done()]:
        writes.discard(future)
        future.result()


def _write_rejects(rejects: list[dict], path: str | os.PathLike) -> None:
    table = pd.DataFrame(rejects, columns=REJECT_COLUMNS)
    with atomic_output(path) as temporary:
        table.to_csv(temporary, index=False)
