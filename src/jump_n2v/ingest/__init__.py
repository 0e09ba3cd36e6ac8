"""Ingest: index a plate's images (any layout) and split each channel into a Zarr v3 array.

``discover_plate`` builds the per-site index without reading pixels (it runs when the workflow is
planned); ``split_channel`` reads one channel of every image, checks it and writes
``raw/{channel}.zarr`` plus the rejects table; ``read_channel`` reads one plane of one TIFF.
"""

from jump_n2v.ingest.discover import (
    DiscoveryError,
    channel_sources,
    check_patch_fits,
    discover_plate,
    ground_truth_index,
    index_channels,
    listing_digest,
    normalise_well,
    read_index,
    remote_source_fingerprints,
    source_column,
    source_path,
    write_index,
)
from jump_n2v.ingest.readers import BadImageError, ChannelImage, read_channel
from jump_n2v.ingest.split import split_channel

__all__ = [
    "BadImageError",
    "ChannelImage",
    "DiscoveryError",
    "channel_sources",
    "check_patch_fits",
    "discover_plate",
    "ground_truth_index",
    "index_channels",
    "listing_digest",
    "normalise_well",
    "read_channel",
    "read_index",
    "remote_source_fingerprints",
    "source_column",
    "source_path",
    "split_channel",
    "write_index",
]
