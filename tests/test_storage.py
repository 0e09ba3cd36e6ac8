"""Plates read from S3 (fsspec + s3fs) against a real S3-compatible server on 127.0.0.1 (moto's
standalone server, started by the test session), and the path_map to a local mirror."""

import gzip
import io
import uuid

import numpy as np
import pandas as pd
import pytest
import tifffile

import gallery_plate as gallery
from s3_server import public_bucket, s3_client, silent_server, truncating_proxy
from jump_n2v.config import ConfigError, validate_config, write_plate_sheet
from jump_n2v.ingest import BadImageError, discover_plate, remote_source_fingerprints, split_channel
from jump_n2v.plumbing.ngff import open_channel_array
from jump_n2v.plumbing.storage import map_path, storage_settings

CHANNELS = ["DNA", "Mito"]


@pytest.fixture(scope="module")
def gallery_copy(s3_endpoint, tmp_path_factory):
    """The tiny Gallery plate on disk (``root``) and in a public bucket of the moto server."""
    root = tmp_path_factory.mktemp("gallery")
    client = s3_client(s3_endpoint)
    public_bucket(client, gallery.BUCKET)
    keys = gallery.write_plate(root, "BR00000001")
    gallery.upload(client, root, keys)
    return {"root": root, "client": client, "keys": keys, "endpoint": s3_endpoint}


def storage(endpoint, **overrides):
    return {"endpoint_url": endpoint, "retries": 1, "connect_timeout": 2, "read_timeout": 2, **overrides}


def put_table(gallery_copy, table, key):
    buffer = io.BytesIO()
    if key.endswith(".parquet"):
        table.to_parquet(buffer, index=False)
    elif key.endswith(".gz"):
        buffer.write(gzip.compress(table.to_csv(index=False).encode()))
    else:
        buffer.write(table.to_csv(index=False).encode())
    gallery_copy["client"].put_object(Bucket=gallery.BUCKET, Key=key, Body=buffer.getvalue())
    return f"s3://{gallery.BUCKET}/{key}"


def test_map_path_replaces_the_longest_matching_prefix():
    path_map = {"s3://cellpainting-gallery/": "/data/gallery/", "s3://cellpainting-gallery/cpg0016-jump/": "/fast/jump/"}
    assert map_path("s3://cellpainting-gallery/cpg0016-jump/source_4/a.tiff", path_map) == "/fast/jump/source_4/a.tiff"
    assert map_path("s3://cellpainting-gallery/cpg0000/a.tiff", path_map) == "/data/gallery/cpg0000/a.tiff"
    assert map_path("s3://other-bucket/a.tiff", path_map) == "s3://other-bucket/a.tiff"


@pytest.mark.parametrize("suffix", [".csv.gz", ".parquet"])
def test_a_gallery_table_on_s3_gives_an_index_of_s3_urls(gallery_copy, suffix):
    table = gallery.load_data_table("BR00000001", f"s3://{gallery.BUCKET}/")
    url = put_table(gallery_copy, table, gallery.table_key("BR00000001", suffix))
    plate_cfg = {"format": "loaddata", "load_data": url, "storage": storage(gallery_copy["endpoint"])}
    index = discover_plate("BR00000001", plate_cfg, CHANNELS)
    assert list(index[["well", "site"]].itertuples(index=False, name=None)) == gallery.SITES
    assert list(index["load_data_row"]) == [0, 1, 2, 3]
    first = f"s3://{gallery.BUCKET}/{gallery.plate_folder('BR00000001')}/r01c01f01p01-ch5sk1fk1fl1.tiff"
    assert index.loc[0, "source_DNA"] == first  # the plate folder's space kept, no '//' collapsed
    assert "source_Brightfield" not in index.columns  # a column of the table, not a channel to denoise


def test_split_from_s3_equals_split_from_disk(gallery_copy, tmp_path):
    s3_table = gallery.write_table(gallery.load_data_table("BR00000001", f"s3://{gallery.BUCKET}/"), tmp_path / "s3.csv")
    disk_table = gallery.write_table(gallery.load_data_table("BR00000001", f"{gallery_copy['root']}/"), tmp_path / "disk.csv")
    arrays = {}
    for name, table, extra in [("s3", s3_table, {"storage": storage(gallery_copy["endpoint"])}), ("disk", disk_table, {})]:
        plate_cfg = {"format": "loaddata", "load_data": str(table), **extra}
        index = discover_plate("BR00000001", plate_cfg, CHANNELS)
        for channel in CHANNELS:
            out = tmp_path / name / f"{channel}.zarr"
            split_channel(index, channel, experiment="e", plate="BR00000001", plate_cfg=plate_cfg, channel_order=None,
                          ingest=None, out_zarr=out, rejects_csv=tmp_path / name / f"{channel}.csv")
            arrays[name, channel] = open_channel_array(out, mode="r")
    for channel in CHANNELS:
        assert arrays["s3", channel].shape == (4, 64, 64)
        assert np.array_equal(arrays["s3", channel][:], arrays["disk", channel][:])
        assert dict(arrays["s3", channel].attrs) == dict(arrays["disk", channel].attrs)


def test_path_map_reads_the_published_table_from_a_local_mirror(gallery_copy, tmp_path):
    # The mirror: the bucket's keys under a local folder, as `aws s3 sync s3://cellpainting-gallery/ DIR` leaves them.
    table = gallery.load_data_table("BR00000001", f"s3://{gallery.BUCKET}/")
    gallery.write_table(table, gallery_copy["root"] / gallery.table_key("BR00000001"))
    plate_cfg = {
        "format": "loaddata",
        "load_data": f"s3://{gallery.BUCKET}/{gallery.table_key('BR00000001')}",
        "path_map": {f"s3://{gallery.BUCKET}/": f"{gallery_copy['root']}/"},
        # Nothing answers here: a read from S3 instead of the mirror would fail.
        "storage": storage("http://127.0.0.1:9", retries=0, connect_timeout=0.5),
    }
    index = discover_plate("BR00000001", plate_cfg, CHANNELS)
    assert index["source_DNA"].str.startswith(f"{gallery_copy['root']}/").all()
    split_channel(index, "DNA", experiment="e", plate="BR00000001", plate_cfg=plate_cfg, channel_order=None,
                  ingest=None, out_zarr=tmp_path / "DNA.zarr", rejects_csv=tmp_path / "DNA.csv")
    assert open_channel_array(tmp_path / "DNA.zarr", mode="r").shape == (4, 64, 64)


def test_a_changed_object_changes_only_its_channels_fingerprint(gallery_copy, tmp_path):
    bucket = f"fingerprints-{uuid.uuid4().hex[:8]}"
    public_bucket(gallery_copy["client"], bucket)
    for key in gallery_copy["keys"]:
        gallery_copy["client"].upload_file(str(gallery_copy["root"] / key), bucket, key)
    table = gallery.write_table(gallery.load_data_table("BR00000001", f"s3://{bucket}/"), tmp_path / "t.csv")
    plate_cfg = {"format": "loaddata", "load_data": str(table), "storage": storage(gallery_copy["endpoint"])}
    index = discover_plate("BR00000001", plate_cfg, CHANNELS)
    settings = storage_settings(plate_cfg)
    before = remote_source_fingerprints(index, settings)
    assert set(before) == set(CHANNELS) and all(before.values())
    assert remote_source_fingerprints(index, settings) == before  # stable when nothing changed
    dna_key = index.loc[1, "source_DNA"].split(f"s3://{bucket}/", 1)[1]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((64, 64), 7, np.uint16))
    gallery_copy["client"].put_object(Bucket=bucket, Key=dna_key, Body=buffer.getvalue())
    after = remote_source_fingerprints(index, settings)
    assert after["Mito"] == before["Mito"] and after["DNA"] != before["DNA"]
    gallery_copy["client"].delete_object(Bucket=bucket, Key=dna_key)
    assert remote_source_fingerprints(index, settings)["DNA"] not in (before["DNA"], after["DNA"])


@pytest.fixture
def bad_plate(request, gallery_copy, tmp_path):
    """A two-site plate whose second site's DNA object fails in one way.

    Yields (kind, plate_cfg, bad URL, words of the expected problem, the first site's good URL).
    """
    kind = request.param
    good = f"s3://{gallery.BUCKET}/{gallery_copy['keys'][0]}"
    bad = f"s3://{gallery.BUCKET}/{gallery_copy['keys'][3]}"
    endpoint = gallery_copy["endpoint"]
    words = {"missing": "does not exist", "denied": "access denied", "timeout": "no answer", "truncated": "cut short"}[kind]
    with truncating_proxy(endpoint, "truncated") as proxy, silent_server() as silent:
        if kind == "missing":
            bad = bad.replace(".tiff", "-gone.tiff")
        elif kind == "denied":
            private = f"private-{uuid.uuid4().hex[:8]}"
            gallery_copy["client"].create_bucket(Bucket=private)  # no policy: anonymous reads are refused
            gallery_copy["client"].upload_file(str(gallery_copy["root"] / gallery_copy["keys"][3]), private, "x/truncated-not.tiff")
            bad = f"s3://{private}/x/truncated-not.tiff"
        elif kind == "truncated":
            key = gallery_copy["keys"][3].replace(".tiff", "-truncated.tiff")
            gallery_copy["client"].upload_file(str(gallery_copy["root"] / gallery_copy["keys"][3]), gallery.BUCKET, key)
            bad = f"s3://{gallery.BUCKET}/{key}"
        use = {"timeout": silent, "truncated": proxy}.get(kind, endpoint)
        rows = [
            {"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": "1",
             "FileName_OrigDNA": good.rsplit("/", 1)[1], "PathName_OrigDNA": good.rsplit("/", 1)[0]},
            {"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": "2",
             "FileName_OrigDNA": bad.rsplit("/", 1)[1], "PathName_OrigDNA": bad.rsplit("/", 1)[0]},
        ]
        table = gallery.write_table(pd.DataFrame(rows), tmp_path / "load_data.csv")
        plate_cfg = {"format": "loaddata", "load_data": str(table),
                     "storage": storage(use, read_timeout=0.5, connect_timeout=0.5, retries=1)}
        yield kind, plate_cfg, bad, words, good


def split_dna(plate_cfg, tmp_path, on_bad_image):
    index = discover_plate("P", plate_cfg, ["DNA"])
    return split_channel(index, "DNA", experiment="e", plate="P", plate_cfg=plate_cfg, channel_order=None,
                         # one bad site of two: past any sensible rejection ceiling, which is not under test here
                         ingest={"on_bad_image": on_bad_image, "max_rejected_fraction": 1.0}, out_zarr=tmp_path / "DNA.zarr",
                         rejects_csv=tmp_path / "rejects" / "DNA.csv")


KINDS = ["missing", "denied", "timeout", "truncated"]


@pytest.mark.parametrize("bad_plate", KINDS, indirect=True)
def test_a_bad_object_fails_naming_the_table_row_the_url_and_the_problem(bad_plate, tmp_path):
    kind, plate_cfg, bad, words, good = bad_plate
    with pytest.raises(BadImageError) as caught:
        split_dna(plate_cfg, tmp_path, "fail")
    message = str(caught.value)
    # Behind the silent endpoint the first site already times out; elsewhere the second site fails.
    url, row = (good, 1) if kind == "timeout" else (bad, 2)
    assert url in message and words in message and f"data row {row}," in message, message


@pytest.mark.parametrize("bad_plate", KINDS, indirect=True)
def test_a_bad_object_is_listed_in_the_rejects_table_with_skip(bad_plate, tmp_path):
    kind, plate_cfg, bad, words, _ = bad_plate
    if kind == "timeout":  # every object of the plate is behind the silent endpoint: nothing usable
        with pytest.raises(BadImageError, match="no usable image"):
            split_dna(plate_cfg, tmp_path, "skip")
    else:
        summary = split_dna(plate_cfg, tmp_path, "skip")
        assert (summary["kept"], summary["rejected"]) == (1, 1)
    rejects = pd.read_csv(tmp_path / "rejects" / "DNA.csv")
    row = rejects[rejects["file"] == bad]
    assert len(row) == 1 and words in row["problem"].iloc[0], rejects.to_dict("records")
    assert (row["well"].iloc[0], row["site"].iloc[0]) == ("A01", 2)


def test_a_profile_reads_a_private_bucket_that_anonymous_access_cannot(gallery_copy, tmp_path, monkeypatch):
    private = f"private-{uuid.uuid4().hex[:8]}"
    gallery_copy["client"].create_bucket(Bucket=private)
    gallery_copy["client"].upload_file(str(gallery_copy["root"] / gallery_copy["keys"][0]), private, "a/site.tiff")
    credentials = tmp_path / "credentials"
    credentials.write_text("[lab]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    table = gallery.write_table(pd.DataFrame([{"Metadata_Well": "A01", "Metadata_Site": "1", "URL_OrigDNA": f"s3://{private}/a/site.tiff"}]), tmp_path / "t.csv")
    for settings, ok in [({}, False), ({"anonymous": False, "profile": "lab", "region": "us-east-1"}, True)]:
        plate_cfg = {"format": "loaddata", "load_data": str(table), "storage": storage(gallery_copy["endpoint"], **settings)}
        index = discover_plate("P", plate_cfg, ["DNA"])
        run = lambda: split_channel(index, "DNA", experiment="e", plate="P", plate_cfg=plate_cfg, channel_order=None,  # noqa: E731
                                    ingest=None, out_zarr=tmp_path / f"{ok}.zarr", rejects_csv=tmp_path / f"{ok}.csv")
        if ok:
            assert run()["kept"] == 1
        else:
            with pytest.raises(BadImageError, match="access denied reading anonymously"):
                run()


def test_storage_settings_are_checked_with_the_config(tmp_path):
    def config(plate, **experiment):
        sheet = write_plate_sheet(tmp_path / "plates.tsv", [{"experiment": "e", "plate": "P", **plate}])
        return {"plates": str(sheet), "experiments": {"e": {"channels": ["DNA"], **experiment}}}

    with pytest.raises(ConfigError, match="profile is used only with anonymous: false"):
        validate_config(config({"format": "loaddata", "load_data": "s3://b/t.csv"}, storage={"profile": "lab"}))
    with pytest.raises(ConfigError, match="only LoadData plates"):
        validate_config(config({"format": "hyperstack", "pattern": "{well}_{site}.tif"}, path_map={"a": "b"}))
    with pytest.raises(ConfigError, match="retries"):
        validate_config(config({"format": "loaddata", "load_data": "t.csv"}, storage={"retries": -1}))
    valid = validate_config(config({"format": "loaddata", "load_data": "s3://b/t.csv"}, storage={"endpoint_url": "http://127.0.0.1:1"}))
    assert storage_settings(valid["experiments"]["e"]["plates"]["P"])["anonymous"] is True


def test_a_table_in_a_missing_bucket_is_told_from_a_missing_table(gallery_copy):
    # Both said only "the object does not exist".
    from jump_n2v.plumbing.storage import StorageError, object_fingerprint

    settings = storage_settings({"storage": storage(gallery_copy["endpoint"])})
    missing_bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/BR1/load_data.csv"
    with pytest.raises(StorageError, match=rf"bucket {missing_bucket[5:].split('/')[0]} does not exist"):
        object_fingerprint(missing_bucket, settings)
    with pytest.raises(StorageError, match=r"the object does not exist \(not in its folder's listing\)"):
        object_fingerprint(f"s3://{gallery.BUCKET}/no/such/load_data.csv", settings)
