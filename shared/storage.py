"""Object storage: one interface, two backends (S3 through the minio SDK, and a directory).

The methods block, and callers run them in an executor, never on the event loop; but put,
the one call per image, is a coroutine that needs no thread: S3 gets an HTTP PUT (aiohttp)
to a URL the SDK presigned, a directory gets the bytes written at once.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import ssl
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import certifi
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from imgpipe.common.config import S3Settings
from imgpipe.common.errors import SettingsError, StorageError

PRESIGN_TTL = timedelta(days=7)  # the longest SigV4 allows
# A put's presigned URL is used at once.
PUT_URL_TTL = timedelta(minutes=15)
PUT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


class Storage(Protocol):
    def ensure_ready(self) -> None:
        """Creates the bucket or directory when missing."""

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Writes data at key, replacing what was there; from the event loop."""

    async def close(self) -> None:
        """Closes what put opened."""

    def put_file(self, key: str, source: BinaryIO, length: int, content_type: str) -> None:
        """Writes length bytes read from source at key, without holding them all at once."""

    def get(self, key: str) -> bytes:
        """Reads the object at key; raises KeyError when there is none."""

    def url_for(self, key: str) -> str:
        """A URL a client can fetch the object from, made now: presigned URLs expire, so
        make one when it is handed out, never store it."""

    def plain_url(self, key: str) -> str:
        """A URL of the object without a signature, that never expires: under the public
        base URL when there is one, else s3://BUCKET/NAME or file:///PATH."""

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every object whose key starts with `prefix/`; returns how many."""

    def copy(self, source_key: str, key: str) -> None:
        """Copies the object at source_key to key, inside the store (S3 CopyObject);
        raises KeyError when there is none at source_key."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
        raise ValueError(f"invalid object key: {key!r}")
    return key


class S3Storage:
    def __init__(
        self, bucket: str, prefix: str, s3: S3Settings, public_base_url: str | None
    ) -> None:
        endpoint = urlsplit(s3.endpoint_url or "https://s3.amazonaws.com")
        if not endpoint.netloc:
            raise SettingsError(f"AWS_ENDPOINT_URL_S3 is not a URL: {s3.endpoint_url!r}")
        self._client = Minio(
            endpoint.netloc,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            secure=endpoint.scheme == "https",
            region=s3.region,
        )
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._session: aiohttp.ClientSession | None = None
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def _name(self, key: str) -> str:
        _check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def ensure_ready(self) -> None:
        try:
            if not self._client.bucket_exists(self._bucket):
                self._client.make_bucket(self._bucket)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise StorageError(f"bucket {self._bucket}: {exc.code}") from exc
        except Exception as exc:
            raise StorageError(f"bucket {self._bucket}: {exc}") from exc

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        url = self._client.presigned_put_object(self._bucket, self._name(key), PUT_URL_TTL)
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=_sdk_trust())
            self._session = aiohttp.ClientSession(connector=connector, timeout=PUT_TIMEOUT)
        headers = {"Content-Type": content_type}
        try:
            async with self._session.put(url, data=data, headers=headers) as response:
                if response.status >= 300:
                    error = _s3_error(response.status, await response.text())
                    raise StorageError(f"put {key}: {error}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageError(f"put {key}: {exc!r}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def put_file(self, key: str, source: BinaryIO, length: int, content_type: str) -> None:
        try:
            self._client.put_object(self._bucket, self._name(key), source, length, content_type)
        except ValueError:
            raise
        except Exception as exc:
            raise StorageError(f"put {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(self._bucket, self._name(key))
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise KeyError(key) from exc
            raise StorageError(f"get {key}: {exc.code}") from exc
        except Exception as exc:
            raise StorageError(f"get {key}: {exc}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def url_for(self, key: str) -> str:
        name = self._name(key)
        if self._public_base_url:
            return f"{self._public_base_url}/{quote(name)}"
        return str(self._client.presigned_get_object(self._bucket, name, expires=PRESIGN_TTL))

    def plain_url(self, key: str) -> str:
        name = self._name(key)
        if self._public_base_url:
            return f"{self._public_base_url}/{quote(name)}"
        return f"s3://{self._bucket}/{quote(name)}"

    def copy(self, source_key: str, key: str) -> None:
        try:
            self._client.copy_object(
                self._bucket, self._name(key), CopySource(self._bucket, self._name(source_key))
            )
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise KeyError(source_key) from exc
            raise StorageError(f"copy {source_key} to {key}: {exc.code}") from exc
        except ValueError:
            raise
        except Exception as exc:
            raise StorageError(f"copy {source_key} to {key}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> int:
        folder = self._name(prefix) + "/"
        try:
            names = [
                o.object_name
                for o in self._client.list_objects(self._bucket, prefix=folder, recursive=True)
                if o.object_name
            ]
            # remove_objects is lazy: the errors it yields are the objects it could not delete.
            errors = list(
                self._client.remove_objects(self._bucket, [DeleteObject(n) for n in names])
            )
        except Exception as exc:
            raise StorageError(f"delete {prefix}/: {exc}") from exc
        if errors:
            raise StorageError(f"delete {prefix}/: {errors[0].code} ({len(errors)} objects)")
        return len(names)


# Numbers the objects FileStorage writes in this process (every instance), for their
# partial files' names.
_WRITES = itertools.count()


class FileStorage:
    """A local directory; ingest's HTTP side serves it at /objects/ for `make run`."""

    def __init__(self, root: Path, public_base_url: str | None) -> None:
        self._root = root
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        # file:// URLs start with the root as the kernel names it (links resolved), found
        # once rather than with a walk of the path per object.
        self._root_uri = root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        return self._root / _check_key(key)

    def ensure_ready(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        # A local directory: written at once, as a thread would take longer to hand over.
        self.put_file(key, io.BytesIO(data), len(data), content_type)

    async def close(self) -> None:
        pass

    def put_file(self, key: str, source: BinaryIO, length: int, content_type: str) -> None:
        path = os.path.join(self._root, _check_key(key))
        # Written under a name of its own, then renamed: a reader never sees half an object.
        partial = f"{os.path.dirname(path)}/.tmp-{os.getpid()}-{next(_WRITES)}"
        try:
            try:
                out = open(partial, "xb")  # noqa: SIM115  # closed below, before the rename
            except FileNotFoundError:  # the object's folder is new (or was deleted)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                out = open(partial, "xb")  # noqa: SIM115
            with out:
                shutil.copyfileobj(source, out)
            os.replace(partial, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise StorageError(f"put {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise StorageError(f"get {key}: {exc}") from exc

    def url_for(self, key: str) -> str:
        return self.plain_url(key)

    def plain_url(self, key: str) -> str:
        if self._public_base_url:
            return f"{self._public_base_url}/{quote(key)}"
        return f"{self._root_uri}/{quote(_check_key(key))}"

    def copy(self, source_key: str, key: str) -> None:
        data = self.get(source_key)
        self.put_file(key, io.BytesIO(data), len(data), "")

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix)
        try:
            count = sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError(f"delete {prefix}/: {exc}") from exc
        return count


def open_storage(url: str, s3: S3Settings, public_base_url: str | None = None) -> Storage:
    """`s3://BUCKET[/PREFIX]` or `file:///DIR`."""
    parts = urlsplit(url)
    if parts.scheme == "s3" and parts.netloc:
        return S3Storage(parts.netloc, parts.path, s3, public_base_url)
    if parts.scheme == "file" and parts.path and not parts.netloc:
        return FileStorage(Path(parts.path), public_base_url)
    raise SettingsError(f"IMGPIPE_STORAGE_URL must be s3://BUCKET[/PREFIX] or file:///DIR: {url!r}")


def _s3_error(status: int, body: str) -> str:
    """HTTP status and S3's error code (its XML's <Code>), if the body names one."""
    start, end = body.find("<Code>"), body.find("</Code>")
    code = body[start + len("<Code>") : end] if 0 <= start < end else ""
    return f"HTTP {status} {code}".rstrip()


def _sdk_trust() -> ssl.SSLContext:
    """What verifies an S3 endpoint's certificate for put: the system's CAs (and
    SSL_CERT_FILE, which OpenSSL reads) plus certifi's bundle, which the minio SDK trusts
    for every other call."""
    context = ssl.create_default_context()
    context.load_verify_locations(certifi.where())
    return context
