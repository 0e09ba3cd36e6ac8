"""Where a plate's files are: local paths, or ``s3://bucket/key`` objects read with fsspec + s3fs.

A plate's ``storage`` block (defaults in the config schema) says how to reach its objects:
anonymously (the Cell Painting Gallery is public) or with an AWS profile / the standard AWS
environment variables, which endpoint (any S3-compatible server), how long to wait, how often to
retry and how many requests to keep in flight. A plate's ``path_map`` rewrites path prefixes, so a
published table naming ``s3://cellpainting-gallery/...`` reads a local mirror made with
``aws s3 sync`` instead, without editing the table.

Every failure is a StorageError naming the URL and the problem in words (the object does not
exist, access denied, no answer within the timeout, the download was cut short, ...).
"""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import os
import posixpath
from typing import Iterable, Mapping

from jump_n2v.settings import load_schema

S3_PREFIX = "s3://"


class StorageError(OSError):
    """An object that cannot be listed or read; ``url`` is the object and ``problem`` says why."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url}: {problem}")


def is_remote(location) -> bool:
    """True for ``s3://`` URLs (the only remote scheme read)."""
    return str(location).lower().startswith(S3_PREFIX)


def storage_settings(plate_cfg: Mapping | None) -> dict:
    """The plate's ``storage`` block with the schema's defaults filled in."""
    properties = load_schema()["definitions"]["storage"]["properties"]
    resolved = {key: copy.deepcopy(spec["default"]) for key, spec in properties.items()}
    resolved.update(((plate_cfg or {}).get("storage")) or {})
    return resolved


def map_path(path: str, path_map: Mapping[str, str] | None) -> str:
    """``path`` with its longest matching ``path_map`` prefix replaced (unchanged when none matches)."""
    for prefix in sorted(path_map or {}, key=len, reverse=True):
        if path.startswith(prefix):
            return path_map[prefix] + path[len(prefix):]
    return path


def join(folder: str, name: str) -> str:
    """A folder (local or s3://) joined with a relative name; s3 URLs keep their '//'."""
    if is_remote(folder):
        return posixpath.join(folder, name)
    return os.path.join(folder, name)


def filesystem(settings: Mapping):
    """An s3fs filesystem for these storage settings (fsspec caches one per distinct settings)."""
    import s3fs  # imported here: planning a local plate never pays for it

    config = {
        "connect_timeout": settings["connect_timeout"],
        "read_timeout": settings["read_timeout"],
        # Retries are s3fs's (below), so that botocore does not multiply them.
        "retries": {"total_max_attempts": 1},
        "max_pool_connections": max(10, int(settings["concurrency"])),
    }
    # max_concurrency 1: one GET per object (above 1, s3fs sends a HEAD first to size parallel
    # range requests); objects are fetched concurrently by the caller's threads instead.
    options = {"anon": bool(settings["anonymous"]), "config_kwargs": config, "max_concurrency": 1}
    if settings.get("endpoint_url"):
        options["endpoint_url"] = settings["endpoint_url"]
    if settings.get("region"):
        options["client_kwargs"] = {"region_name": settings["region"]}
    if settings.get("profile"):
        options["profile"] = settings["profile"]
    fs = s3fs.S3FileSystem(**options)
    fs.retries = int(settings["retries"]) + 1  # s3fs counts attempts, the setting counts retries
    return fs


def read_bytes(url: str, settings: Mapping) -> bytes:
    """The whole object at ``url``; StorageError naming the URL and the problem otherwise."""
    fs = filesystem(settings)
    try:
        return fs.cat_file(url)
    except Exception as error:  # botocore, aiohttp and s3fs raise many types
        raise StorageError(url, describe_error(error, settings)) from error


def object_fingerprint(url: str, settings: Mapping) -> str:
    """ETag, size and modification time of one object, from a listing of its folder.

    A listing rather than a HEAD request: read-only public buckets grant s3:ListBucket and
    s3:GetObject, and a listing needs nothing else.
    """
    value = list_objects([url], settings)[url]
    if value == "missing":
        bucket = _strip_scheme(url).split("/", 1)[0]
        if not bucket_exists(bucket, settings):
            raise StorageError(url, f"bucket {bucket} does not exist (or these storage settings cannot see it)")
        raise StorageError(url, "the object does not exist (not in its folder's listing)")
    if value.startswith("unlisted: "):
        raise StorageError(url, value[len("unlisted: "):])
    return value


def bucket_exists(bucket: str, settings: Mapping) -> bool:
    """Whether ``bucket`` can be listed; asked only after an object was not found, to say which is missing."""
    try:
        filesystem(settings).ls(f"{S3_PREFIX}{bucket}", refresh=True)
    except FileNotFoundError:
        return False
    except Exception:  # denied or unreachable: the bucket may exist, so not "missing"
        return True
    return True


def list_objects(urls: Iterable[str], settings: Mapping) -> dict[str, str]:
    """``url -> fingerprint`` for every URL, from one listing per folder (never one request per object).

    A URL whose folder listing does not have it maps to "missing"; a folder that cannot be listed
    maps its URLs to "unlisted: <problem>", so the split (not the plan) reports each bad image.
    Folders are listed concurrently (the storage setting ``concurrency``).
    """
    folders: dict[str, list[str]] = {}
    for url in dict.fromkeys(urls):
        folders.setdefault(url.rsplit("/", 1)[0], []).append(url)
    fs = filesystem(settings)

    def list_folder(folder: str) -> dict[str, str]:
        try:
            entries = fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            entries = []
        except Exception as error:
            problem = describe_error(error, settings)
            return {url: f"unlisted: {problem}" for url in folders[folder]}
        listed = {_strip_scheme(entry["name"]): _entry_fingerprint(entry) for entry in entries if entry.get("type") == "file"}
        return {url: listed.get(_strip_scheme(url), "missing") for url in folders[folder]}

    result: dict[str, str] = {}
    workers = max(1, min(int(settings["concurrency"]), len(folders)))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="s3-list") as pool:
        for listed in pool.map(list_folder, folders):
            result.update(listed)
    return result


def fingerprint(entries: Iterable[tuple[str, str]]) -> str:
    """One short digest of (url, object fingerprint) pairs, order-independent."""
    digest = hashlib.sha256()
    for url, value in sorted(entries):
        digest.update(f"{url}\t{value}\n".encode())
    return digest.hexdigest()[:32]


def describe_error(error: BaseException, settings: Mapping) -> str:
    """What went wrong, in words a user can act on."""
    names = {type(cause).__name__ for cause in _causes(error)}
    text = f"{type(error).__name__}: {error}"
    attempts = int(settings["retries"]) + 1
    endpoint = settings.get("endpoint_url") or "AWS S3"
    if isinstance(error, FileNotFoundError) or "NoSuchKey" in text or "NoSuchBucket" in names:
        return f"the object does not exist ({text})"
    if isinstance(error, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        how = "anonymously" if settings["anonymous"] else f"with profile {settings.get('profile') or '(default credentials)'}"
        return f"access denied reading {how} ({text}); check the plate's storage anonymous / profile settings"
    if names & {"ReadTimeoutError", "ConnectTimeoutError", "TimeoutError", "FSTimeoutError", "ServerTimeoutError"}:
        return (
            f"no answer from {endpoint} within the storage timeouts (connect {settings['connect_timeout']} s, "
            f"read {settings['read_timeout']} s), {attempts} attempt(s) ({text})"
        )
    if names & {"ClientPayloadError", "IncompleteReadError", "IncompleteRead", "ResponseStreamingError", "ContentLengthError"}:
        return f"the download was cut short (truncated), {attempts} attempt(s) ({text})"
    if names & {"EndpointConnectionError", "ClientConnectorError", "ConnectionRefusedError", "ServerDisconnectedError"}:
        return f"cannot connect to {endpoint}, {attempts} attempt(s) ({text})"
    return text


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _strip_scheme(url: str) -> str:
    return url[len(S3_PREFIX):] if is_remote(url) else url


def _entry_fingerprint(entry: Mapping) -> str:
    modified = entry.get("LastModified") or entry.get("last_modified") or ""
    etag = str(entry.get("ETag") or entry.get("etag") or "").strip('"')
    return f"{etag}/{entry.get('size')}/{modified}"
