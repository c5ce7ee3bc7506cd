"""http(s):// model sources: one file, or an archive (.tar.gz, .tgz, .tar, .zip) extracted in place.

Every read is bounded: connect and read timeouts, a redirect limit, a byte limit on the download and on what
an archive extracts to. https verifies the server against `SSL_CERT_FILE` (a private mirror's CA bundle)
or, when unset, httpx's default (certifi's bundle). `?sha256=HEX` pins the downloaded bytes (the archive, not its members).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from slimserve.api.uri import StorageUri
from slimserve.artifacts.errors import StorageError
from slimserve.artifacts.paths import contained_path

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # the longest wait for the next bytes, not for the whole download
MAX_REDIRECTS = 10
MAX_BYTES = 64 * 2**30  # the download, and separately what an archive extracts to
CHUNK_BYTES = 1 << 20
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def fetch_http(source: StorageUri, directory: Path, *, max_bytes: int = MAX_BYTES) -> Path:
    """Download `source` into the empty `directory`: the file, or the folder its archive was extracted to."""
    uri, url = source.uri, source.http_url or ""
    name = PurePosixPath(unquote(urlsplit(url).path)).name or "download"
    archive = next((suffix for suffix in ARCHIVE_SUFFIXES if name.lower().endswith(suffix)), None)
    download = contained_path(directory, f".{name}.part" if archive else name, what=f"{uri!r}: file name")
    digest = _download(uri, url, download, max_bytes)
    if source.sha256 is not None and digest != source.sha256:
        download.unlink()
        raise StorageError(f"{uri!r}: sha256 mismatch: the download is {digest}, the URI pins {source.sha256}", reason="DigestMismatch")
    if archive is None:
        return download
    extracted = directory / "content"
    extracted.mkdir()
    try:
        if archive == ".zip":
            _extract_zip(uri, download, extracted, max_bytes)
        else:
            _extract_tar(uri, download, extracted, max_bytes)
    finally:
        download.unlink()
    entries = list(extracted.iterdir())
    # An archive of one folder (`tar czf model.tar.gz model/`) names that folder.
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else extracted


def _download(uri: str, url: str, path: Path, max_bytes: int) -> str:
    """Stream `url` to `path`; the sha256 of what was received. A StorageError naming `uri` for any failure."""
    import httpx

    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    digest, received = hashlib.sha256(), 0
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=MAX_REDIRECTS, verify=_tls_context()) as client:
            with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code != 200:
                    reason = "NotFound" if response.status_code in (401, 403, 404) else None
                    raise StorageError(f"{uri!r}: the server answered {response.status_code} {response.reason_phrase}", reason=reason)
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise StorageError(f"{uri!r}: {declared} bytes, more than the limit of {max_bytes}")
                with open(path, "wb") as out:
                    for chunk in response.iter_raw(CHUNK_BYTES):
                        received += len(chunk)
                        if received > max_bytes:
                            raise StorageError(f"{uri!r}: more than the limit of {max_bytes} bytes")
                        digest.update(chunk)
                        out.write(chunk)
                if declared is not None and declared.isdigit() and received != int(declared):
                    raise StorageError(f"{uri!r}: truncated download: {received} of {declared} bytes")
    except httpx.TooManyRedirects:
        raise StorageError(f"{uri!r}: more than {MAX_REDIRECTS} redirects (a redirect loop?)") from None
    except httpx.TimeoutException as exc:
        raise StorageError(f"{uri!r}: timed out ({type(exc).__name__})") from None
    except httpx.RemoteProtocolError as exc:
        raise StorageError(f"{uri!r}: truncated download: {exc}") from None
    except httpx.HTTPError as exc:
        raise StorageError(f"{uri!r}: download failed: {exc}") from None
    return digest.hexdigest()


def _tls_context() -> ssl.SSLContext | bool:
    """A private mirror's CA bundle (`SSL_CERT_FILE`), else httpx's default verification (certifi's bundle)."""
    bundle = os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=bundle) if bundle else True


def _extract_tar(uri: str, archive: Path, target: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                contained_path(target, member.name, what=f"{uri!r}: archive member", allow_root=True)
                if not (member.isfile() or member.isdir()):
                    raise StorageError(f"{uri!r}: archive member {member.name!r} is a link or a device; only files and folders are taken")
                total += member.size
            if total > max_bytes:
                raise StorageError(f"{uri!r}: the archive extracts to {total} bytes, more than the limit of {max_bytes}")
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise StorageError(f"{uri!r}: not a readable tar archive: {exc}") from None


def _extract_zip(uri: str, archive: Path, target: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            for info in infos:
                contained_path(target, info.filename, what=f"{uri!r}: archive member", allow_root=True)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise StorageError(f"{uri!r}: archive member {info.filename!r} is a link; only files and folders are taken")
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise StorageError(f"{uri!r}: the archive extracts to {total} bytes, more than the limit of {max_bytes}")
            zipped.extractall(target)  # members read no further than their declared size
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise StorageError(f"{uri!r}: not a readable zip archive: {exc}") from None
