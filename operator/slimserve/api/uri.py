"""Storage URIs, parsed once: the rules every reader of a model, dataset or artifact URI applies.

builtin://NAME   a demo model or data set shipped with SlimServe
file:///path     a local path (`file://relative/path` is relative to the working directory)
pvc://CLAIM/p    path p on the PersistentVolumeClaim CLAIM, which the operator mounts into the pod
s3://BUCKET/k    an object, or every object under a prefix, in an S3-compatible store
http(s)://HOST/p a file or an archive (.tar.gz, .tgz, .tar, .zip) served over HTTP; `?sha256=HEX` pins its
                 digest (the parameter is the loader's and is not sent; other query parameters are)
hf://ORG/NAME    a Hugging Face Hub model repository, `hf://ORG/NAME@REVISION` at a branch, tag or commit

The rules, one set for the operator (which refuses a spec before a pod starts), the compressor, the server
and `slimserve run`: `scheme://` and something after it; a claim is a PersistentVolumeClaim name (a
lowercase DNS subdomain, so never `.` or `..`) and the path on it has no `..`; an s3 URI names its bucket; an http(s) URI names its host and at most one
`sha256` of 64 hex digits; an hf URI names ORG/NAME (letters, digits, `-`, `_`, `.`, never `..`) and a
revision without `..`.
Empty path segments (`pvc://models//v1`) are harmless and kept. Placing a parsed path on a disk is
`slimserve.artifacts` work (its `contained_path` keeps it inside its directory, symlinks included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BUILTIN, FILE, PVC, S3, HTTP, HTTPS, HF = "builtin", "file", "pvc", "s3", "http", "https", "hf"
SCHEMES = (BUILTIN, FILE, PVC, S3, HTTP, HTTPS, HF)
STORAGE_SCHEMES = (FILE, PVC, S3)  # where artifacts are read from and written to
LOCAL_SCHEMES = (FILE, PVC)  # a path in the pod's (or this machine's) file system
SOURCE_SCHEMES = STORAGE_SCHEMES + (HTTP, HTTPS, HF)  # where a model (or an artifact to serve) is read from
DOWNLOAD_SCHEMES = (HTTP, HTTPS, HF)  # read once into the download cache, never written to

SHA256_PARAM = "sha256"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HF_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9._/-]+$")

CLAIM_NAME_MAX = 253
CLAIM_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a PersistentVolumeClaim name: a DNS subdomain
_CLAIM_NAME = re.compile(CLAIM_NAME_PATTERN)


class InvalidUri(ValueError):
    """A URI that breaks the rules; the message names the URI or the part at fault and what is expected."""


@dataclass(frozen=True)
class StorageUri:
    uri: str
    scheme: str
    authority: str  # the claim (pvc), the bucket (s3), the name (builtin); file: the host part, usually ""
    path: str  # what follows the authority, without the "/" between them; "" when nothing does

    @property
    def claim(self) -> str | None:
        return self.authority if self.scheme == PVC else None

    @property
    def bucket(self) -> str | None:
        return self.authority if self.scheme == S3 else None

    @property
    def hf_repo(self) -> tuple[str, str | None] | None:
        """(ORG/NAME, REVISION or None) of an hf:// URI."""
        if self.scheme != HF:
            return None
        name, _, revision = self.path.partition("@")
        return f"{self.authority}/{name}", revision or None

    @property
    def http_url(self) -> str | None:
        """The URL an http(s) URI is fetched from: the URI without its `sha256` parameter."""
        if self.scheme not in (HTTP, HTTPS):
            return None
        return _without_sha256(self.uri)[0]

    @property
    def sha256(self) -> str | None:
        """The digest an http(s) URI pins with `?sha256=HEX`, lowercase; None when it pins none."""
        if self.scheme not in (HTTP, HTTPS):
            return None
        digests = _without_sha256(self.uri)[1]
        return digests[0].lower() if digests else None

    @property
    def local_path(self) -> str | None:
        """The path of a file:// URI as the file system reads it (`file://a/b` -> `a/b`, `file:///a` -> `/a`)."""
        if self.scheme != FILE:
            return None
        return f"{self.authority}/{self.path}" if self.authority else f"/{self.path}"


def parse_uri(uri: str, schemes: tuple[str, ...] = SCHEMES) -> StorageUri:
    """The URI's parts; InvalidUri for anything outside `schemes` or breaking a rule of its scheme."""
    parsed = _split(uri)
    if parsed is None:
        raise InvalidUri(f"{uri!r} is not a URI: expected scheme://path with scheme one of {', '.join(schemes)}")
    scheme, authority = parsed.scheme, parsed.authority
    if scheme not in schemes:
        raise InvalidUri(f"{uri!r}: unsupported scheme {scheme!r}; use one of {', '.join(schemes)}")
    if scheme == PVC:
        _check_pvc(parsed)
    elif scheme == S3 and not authority:
        raise InvalidUri(f"{uri!r} names no bucket; expected s3://BUCKET/key")
    elif scheme in (HTTP, HTTPS):
        _check_http(parsed)
    elif scheme == HF:
        _check_hf(parsed)
    return parsed


def pvc_claim(uri: str) -> str | None:
    """CLAIM of `pvc://CLAIM/path`, else None. The claim is not checked here: a spec's URIs are checked where
    the spec is, and a claim that is no claim name is refused by the API server with the pod that mounts it."""
    parsed = _split(uri)
    return (parsed.claim or None) if parsed else None


def _split(uri: str) -> StorageUri | None:
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme or not rest:
        return None
    authority, _, path = rest.partition("/")
    return StorageUri(uri, scheme, authority, path)


def _check_pvc(parsed: StorageUri) -> None:
    claim = parsed.authority
    if not claim:
        raise InvalidUri(f"{parsed.uri!r} names no claim; expected pvc://CLAIM/path")
    if len(claim) > CLAIM_NAME_MAX or not _CLAIM_NAME.match(claim):
        raise InvalidUri(
            f"{claim!r} is not a PersistentVolumeClaim name (lowercase DNS subdomain); expected pvc://CLAIM/path"
        )
    if ".." in parsed.path.split("/"):
        raise InvalidUri(f"{parsed.uri!r} must not contain '..'; expected pvc://CLAIM/path without '..'")


def _without_sha256(uri: str) -> tuple[str, list[str]]:
    """The URI without its `sha256` query parameters, and their values (the fragment is never sent)."""
    url, _, _fragment = uri.partition("#")
    base, sep, query = url.partition("?")
    kept, digests = [], []
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if key == SHA256_PARAM:
            digests.append(value)
        else:
            kept.append(part)
    return base + ("?" + "&".join(kept) if kept else ""), digests


def _check_http(parsed: StorageUri) -> None:
    host = parsed.authority.rpartition("@")[2]
    if not host or host.startswith(":"):
        raise InvalidUri(f"{parsed.uri!r} names no host; expected {parsed.scheme}://HOST/path")
    digests = _without_sha256(parsed.uri)[1]
    if len(digests) > 1:
        raise InvalidUri(f"{parsed.uri!r}: sha256 given {len(digests)} times; give it once")
    if digests and not _SHA256.match(digests[0].lower()):
        raise InvalidUri(f"{parsed.uri!r}: sha256 must be 64 hex digits, got {digests[0]!r}")


def _check_hf(parsed: StorageUri) -> None:
    name, at, revision = parsed.path.partition("@")
    expected = "expected hf://ORG/NAME or hf://ORG/NAME@REVISION"
    for part in (parsed.authority, name):
        if not _HF_NAME.match(part) or ".." in part:
            raise InvalidUri(f"{parsed.uri!r}: {part!r} is not a repository owner or name; {expected}")
    if at and (not _HF_REVISION.match(revision) or ".." in revision.split("/") or revision.startswith("/")):
        raise InvalidUri(f"{parsed.uri!r}: {revision!r} is not a revision (branch, tag or commit); {expected}")
