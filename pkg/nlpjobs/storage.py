"""One URI layer for ``file://`` and ``s3://``, with bounded retries and clear errors.

S3 endpoint, region and credentials come from the standard AWS environment and config files
(``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, profiles...).
Transient faults (connection refused, timeouts, 5xx) are retried with exponential backoff; after the
last attempt a :class:`StorageError` names the endpoint and the operation. Listing, writing and copying
go through fsspec (s3fs); whole-object reads on S3 through boto3 (less client CPU per byte).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fsspec

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIES = int(os.environ.get("NLPJOBS_STORAGE_RETRIES", "5"))
BACKOFF_S = float(os.environ.get("NLPJOBS_STORAGE_BACKOFF_S", "0.5"))


class StorageError(RuntimeError):
    """Object storage refused or could not be reached; the message says where and what to check."""


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS default endpoint"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}  # base classes count (e.g. botocore HTTPClientError)
    text = str(exc)
    transient_names = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                       "ClientConnectorError", "ServerDisconnectedError", "ConnectionClosedError",
                       "ClientOSError", "TimeoutError", "ConnectionError", "ConnectionRefusedError",
                       "ConnectionResetError", "IncompleteReadError", "ResponseStreamingError",
                       # what s3fs would have retried itself (it is told not to: see _filesystem)
                       "HTTPClientError", "IncompleteRead", "ResponseParserError", "ClientPayloadError"}
    if names & transient_names or isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    # s3fs turns server errors into bare OSErrors whose text is only the server's message
    # ("We encountered an internal error, please try again."): look at the botocore error it
    # chains as __cause__, and at the errno s3fs picks for 5xx/throttling (EREMOTEIO, EBUSY).
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            break
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            code = str((response.get("Error") or {}).get("Code", ""))
            if int(status) >= 500 or code in _TRANSIENT_CODES:
                return True
        cause = cause.__cause__
    if type(exc) is OSError and exc.errno in (_EREMOTEIO, errno.EBUSY):
        return True
    markers = ("Connect", "connect", "timed out", "503", "500 ", "502", "504", "SlowDown",
               "InternalError", "ServiceUnavailable", "Could not connect")
    return any(m in text for m in markers)


_EREMOTEIO = getattr(errno, "EREMOTEIO", errno.EIO)
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
                    "ThrottlingException", "RequestLimitExceeded", "500", "502", "503", "504"}


def explain(exc: BaseException, what: str, uri: str) -> str:
    """What went wrong in ``what`` (e.g. "writing") on ``uri``, and what to check: the local directory's owner and
    mode for a local path, the credentials and bucket policy for an object store."""
    local = _explain_local(exc, what, uri)
    if local:
        return local
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text or "Forbidden" in text:
        return (f"{what} {uri}: access denied by {endpoint()} ({text}). Check AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY (or the credentials Secret) and the bucket policy.")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"{what} {uri}: the bucket does not exist on {endpoint()}. Create it or fix `storage:`."
    if "internal error" in text.lower():
        return (f"{what} {uri}: {endpoint()} reported an internal error ({text}); check the object store's "
                "logs and free space.")
    return f"{what} {uri}: {text}"


def _explain_local(exc: BaseException, what: str, uri: str) -> str | None:
    """The message for a local file system's refusal (``file://`` or a plain path), else None. A local
    PermissionError is the directory's owner or mode, never AWS credentials."""
    if ("://" in uri and not uri.startswith("file://")) or not isinstance(exc, OSError):
        return None
    path = Path(uri.split("://", 1)[-1])
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        where = next((p for p in (path, *path.parents) if p.exists()), path)
        kind = "directory" if where.is_dir() else "file"
        return (f"permission denied {what} {path}: check the owner and mode of the {kind} {where} (the process "
                f"runs as uid {os.geteuid()}, gid {os.getegid()}), or point `storage:` at a directory it can write")
    if exc.errno == errno.EROFS:
        return f"{what} {path}: read-only file system ({exc}); point `storage:` at a writable volume"
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return (f"{what} {path}: {blocker} is a file, not a directory, so no directory can be created "
                    "under it; move it away or pick another path")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what} {path}: {os.strerror(exc.errno).lower()} ({exc}); free space there or pick another volume"
    return None


def retry(fn: Callable[[], T], what: str, uri: str, retries: int | None = None) -> T:
    """Run ``fn`` with bounded retries and exponential backoff on transient faults."""
    attempts = RETRIES if retries is None else retries
    delay = BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _is_transient(exc):
                if isinstance(exc, FileNotFoundError) and "bucket" not in str(exc).lower():
                    raise
                raise StorageError(explain(exc, what, uri)) from exc
            if attempt == attempts:
                raise StorageError(
                    f"{what} {uri}: object store at {endpoint()} unreachable after {attempts} attempts "
                    f"({type(exc).__name__}: {exc}). Check that the endpoint is up and reachable."
                ) from exc
            log.warning("%s %s failed (%s); retry %d/%d in %.1fs", what, uri, type(exc).__name__,
                        attempt, attempts - 1, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


_FS_CACHE: dict[str, fsspec.AbstractFileSystem] = {}


def _filesystem(scheme: str) -> fsspec.AbstractFileSystem:
    if scheme not in _FS_CACHE:
        if scheme == "s3":
            import s3fs

            # retry() above owns retries: s3fs's own loop (5 tries) and botocore's would multiply
            # with it (up to 5 x 5 x 3 attempts), far beyond NLPJOBS_STORAGE_RETRIES.
            fs = s3fs.S3FileSystem(
                skip_instance_cache=True,
                use_listings_cache=False,
                endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
                config_kwargs={"connect_timeout": 5, "read_timeout": 60,
                               "retries": {"total_max_attempts": 2, "mode": "standard"}},
            )
            fs.retries = 1  # a class attribute in s3fs (default 5), not a constructor argument
            _FS_CACHE[scheme] = fs
        elif scheme == "file":
            _FS_CACHE[scheme] = fsspec.filesystem("file", auto_mkdir=True)
        else:
            raise StorageError(f"unsupported storage scheme {scheme!r}: use file:// or s3://")
    return _FS_CACHE[scheme]


_S3_CLIENT: list[Any] = []
_S3_CLIENT_LOCK = threading.Lock()


def _s3_client() -> Any:
    """boto3's S3 client, for whole-object reads (GET into memory or a local file).

    s3fs reads a body through aiohttp on its event-loop thread; botocore's blocking stream costs about half
    the client CPU per byte (``make bench``, storage figures), which is what limits reads when the object
    store shares the node's cores. Same endpoint, credentials and timeouts as the s3fs filesystem.
    """
    with _S3_CLIENT_LOCK:
        if not _S3_CLIENT:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=5, read_timeout=60, max_pool_connections=32,
                            retries={"total_max_attempts": 2, "mode": "standard"})  # retry() owns retries
            _S3_CLIENT.append(boto3.session.Session().client(
                "s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
                config=config))
        return _S3_CLIENT[0]


def _s3_body(path: str) -> Any:
    """The streaming body of object ``bucket/key``; a missing object is FileNotFoundError (as in s3fs)."""
    from botocore.exceptions import ClientError

    bucket, _, key = path.partition("/")
    try:
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in {"NoSuchKey", "404", "NotFound"}:
            raise FileNotFoundError(errno.ENOENT, "no such object", f"s3://{path}") from exc
        raise


def _get_file(fs: fsspec.AbstractFileSystem, remote: bool, path: str, local: Path) -> None:
    """Copy one object or file to ``local``. S3: streamed from one GET into ``local``, truncated first (a
    retry starts over)."""
    if not remote:
        fs.get_file(path, str(local))
        return
    body = _s3_body(path)
    with open(local, "wb") as out:
        for chunk in body.iter_chunks(1 << 20):
            out.write(chunk)


def reset() -> None:
    """Forget cached filesystems and clients (after changing AWS_* variables, e.g. in tests)."""
    _FS_CACHE.clear()
    with _S3_CLIENT_LOCK:
        _S3_CLIENT.clear()


def resolve(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Split a URI into its filesystem and path. Relative file:// paths are made absolute."""
    if "://" not in uri:
        uri = "file://" + uri
    scheme, path = uri.split("://", 1)
    if scheme == "file":
        path = str(Path(path).expanduser().resolve())
    return _filesystem(scheme), path.rstrip("/")


def normalize(uri: str) -> str:
    fs, path = resolve(uri)
    return ("s3://" + path) if uri.startswith("s3://") else ("file://" + path)


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        if part.strip("/"):
            out += "/" + part.strip("/")
    return out


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return retry(lambda: fs.exists(path), "checking", uri)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    if uri.startswith("s3://"):
        return retry(lambda: _s3_body(path).read(), "reading", uri)
    return retry(lambda: fs.cat_file(path), "reading", uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object. On file:// the bytes go to a temporary file beside the target, renamed over it:
    a reader (another rank, another pod on a shared volume) sees the old content or the new, never a
    truncated file, as with an S3 PUT."""
    fs, path = resolve(uri)
    if uri.startswith("file://"):
        retry(lambda: _replace_file(Path(path), data), "writing", uri)
    else:
        retry(lambda: fs.pipe_file(path, data), "writing", uri)


def _replace_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{time.monotonic_ns()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(uri: str) -> Any:
    raw = read_bytes(uri)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri}: not valid JSON ({exc}); the file is corrupted") from exc


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under ``uri``; empty when it does not exist."""
    fs, path = resolve(uri)

    def _ls() -> list[str]:
        try:
            entries = fs.ls(path, detail=False, refresh=True) if uri.startswith("s3://") else fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != path})

    return retry(_ls, "listing", uri)


def size(uri: str) -> int:
    fs, path = resolve(uri)
    return int(retry(lambda: fs.size(path), "stat", uri))


def remove(uri: str) -> None:
    """Delete a file or a whole prefix; missing is fine."""
    fs, path = resolve(uri)
    remote = uri.startswith("s3://")

    def _rm() -> None:
        try:
            found = fs.find(path, withdirs=True) if remote else []
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            return
        if remote:
            _remove_dir_entries(fs, path, found)

    retry(_rm, "deleting", uri)


def _remove_dir_entries(fs: fsspec.AbstractFileSystem, path: str, found: list[str]) -> None:
    """Delete the directory entries left under a removed S3 prefix (deepest first).

    Object stores with a real directory tree (SeaweedFS) keep the emptied directories and list them
    as common prefixes, so ``exists``/``listdir`` would still see a removed prefix. Deleting the key
    ``dir/`` removes such an entry (only when empty); on AWS it is a no-op. One request per 1000 dirs.
    """
    dirs: set[str] = set()
    for entry in found:
        parent = entry.rstrip("/")
        while parent.startswith(path + "/"):
            parent = parent.rsplit("/", 1)[0]
            dirs.add(parent)
    if not dirs:
        return
    bucket, _, _ = path.partition("/")
    keys = [d.partition("/")[2] + "/" for d in sorted(dirs, key=lambda d: (-d.count("/"), d))]
    keys = [k for k in keys if k != "/"]
    for i in range(0, len(keys), 1000):
        fs.call_s3("delete_objects", Bucket=bucket,
                   Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


def upload(local: str | Path, uri: str) -> None:
    """Copy a local file or directory tree to ``uri`` (each file retried on its own)."""
    local = Path(local)
    fs, path = resolve(uri)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for f in files:
        target = path if local.is_file() else f"{path}/{f.relative_to(local).as_posix()}"
        retry(lambda f=f, t=target: fs.put_file(str(f), t), "uploading to", "s3://" + target
              if uri.startswith("s3://") else target)


def download(uri: str, local: str | Path) -> Path:
    """Copy a file or prefix from ``uri`` to the local path ``local``."""
    fs, path = resolve(uri)
    local = Path(local)
    remote = uri.startswith("s3://")

    def _get() -> None:
        if fs.isdir(path):
            for src in fs.find(path):
                dst = local / src[len(path):].lstrip("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                _get_file(fs, remote, src, dst)
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
            _get_file(fs, remote, path, local)

    retry(_get, "downloading", uri)
    return local


def download_file(uri: str, local: str | Path) -> Path:
    """Copy the single object or file ``uri`` to the local path ``local`` (no directory lookup first: one
    request per shard on S3)."""
    fs, path = resolve(uri)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    retry(lambda: _get_file(fs, uri.startswith("s3://"), path, local), "downloading", uri)
    return local


def copy_tree(src_uri: str, dst_uri: str) -> None:
    """Copy every object under ``src_uri`` to ``dst_uri`` (server-side on S3)."""
    fs, src = resolve(src_uri)
    _, dst = resolve(dst_uri)
    for f in retry(lambda: fs.find(src), "listing", src_uri):
        target = dst + "/" + f[len(src):].lstrip("/")
        retry(lambda f=f, t=target: fs.copy(f, t), "copying", src_uri)


def probe_writable(root: str) -> float:
    """Write, read back and delete a probe object under ``root`` (before any compute is spent).

    Raises StorageError (access denied, missing bucket, unreachable endpoint); returns the seconds taken.
    """
    import uuid

    started = time.time()
    probe = join(root, f".nlpjobs-probe-{uuid.uuid4().hex[:8]}")
    write_bytes(probe, b"nlpjobs probe")
    if read_bytes(probe) != b"nlpjobs probe":
        raise StorageError(f"{root}: a probe object read back different bytes than were written; check the "
                           f"object store at {endpoint()}")
    remove(probe)
    return time.time() - started


_LOCAL_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


def explain_local_os_error(exc: BaseException) -> str | None:
    """A clear message for a local-disk failure (full scratch, read-only or foreign directory), else None."""
    for cause in (exc, exc.__cause__, exc.__context__):
        code, where = None, None
        if isinstance(cause, OSError) and cause.errno in _LOCAL_ERRNOS:
            code, where = cause.errno, cause.filename
        elif isinstance(cause, OSError):  # shutil.Error and friends carry the errors as text
            code = next((c for c in (errno.ENOSPC, errno.EDQUOT) if os.strerror(c) in str(cause)), None)
        if code is not None:
            where = where or os.environ.get("NLPJOBS_CACHE") or "the local cache"
            detail = str(cause) if len(str(cause)) < 300 else str(cause)[:300] + "..."
            return (f"{_LOCAL_ERRNOS[code]} writing {where} ({detail}). nlpjobs stages data, checkpoints "
                    f"and models under NLPJOBS_CACHE={cache_dir_path()}: free space there, point NLPJOBS_CACHE "
                    "at a larger writable volume, or raise the chart's scratch size (scratch.sizeLimit). "
                    "Nothing was committed by the failed step.")
    return None


def cache_dir_path() -> Path:
    return Path(os.environ.get("NLPJOBS_CACHE", Path.home() / ".cache" / "nlpjobs"))


def cache_dir() -> Path:
    """Local scratch/cache directory (NLPJOBS_CACHE, default ~/.cache/nlpjobs)."""
    root = cache_dir_path()
    root.mkdir(parents=True, exist_ok=True)
    return root


def prefetched(*parts: str) -> Path | None:
    """A complete read-only copy of ``<cache>/<parts>`` baked into an image, if any.

    ``NLPJOBS_PREFETCHED`` lists directories (``:``-separated) laid out like the cache; an entry counts
    only with its ``_SUCCESS`` marker. Task images set it so offline presets run without any download.
    """
    for root in filter(None, os.environ.get("NLPJOBS_PREFETCHED", "").split(":")):
        candidate = Path(root).joinpath(*parts)
        if (candidate / "_SUCCESS").exists():
            return candidate
    return None
