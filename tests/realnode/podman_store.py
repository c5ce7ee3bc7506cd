"""podman's images as an OCI image layout, read from its store, for `ctr images import`.

`podman save` writes the whole archive (7 GiB for the torch images) to a temporary file before it streams it,
and containerd reads every layer of a docker archive into an ingest file before it knows the layer's digest, so
each new content tag cost twice the images' size in transient disk even when only the project's top layer
changed. Here each image's manifest and config come from podman's store as they are, and a layer containerd
already holds is left out: the others are rebuilt bit for bit from the store (tar-split: the tar's headers and
the layer's files), and containerd checks every blob against the digest its name says.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

CHUNK = 1 << 20


def graph_root() -> Path:
    out = subprocess.run(["podman", "info", "--format", "{{.Store.GraphRoot}}"], check=True, capture_output=True,
                         text=True)
    return Path(out.stdout.strip())


class PodmanStore:
    def __init__(self, root: Path | None = None):
        self.root = root or graph_root()
        self.images = json.loads((self.root / "overlay-images" / "images.json").read_text())
        self.layers = {layer["diff-digest"]: layer
                       for layer in json.loads((self.root / "overlay-layers" / "layers.json").read_text())
                       if layer.get("diff-digest")}

    def image(self, ref: str) -> dict:
        found = [image for image in self.images if ref in image.get("names", [])]
        if not found:
            raise LookupError(f"podman has no image {ref}")
        return found[0]

    def big_data(self, image: dict, key: str) -> bytes:
        """An item the store keeps beside an image: its manifest, its config (keyed by the image's digest)."""
        safe = key and all(c.isascii() and (c.isalnum() or c in "._-") for c in key)  # containers-storage's naming
        name = key if safe else "=" + base64.b64encode(key.encode()).decode()
        return (self.root / "overlay-images" / image["id"] / name).read_bytes()

    def manifest(self, ref: str) -> tuple[bytes, dict]:
        raw = self.big_data(self.image(ref), "manifest")
        return raw, json.loads(raw)

    def layer_sizes(self, *refs: str) -> dict[str, int]:
        """Layer digest -> bytes, for the layers of `refs` (each shared layer once)."""
        sizes = {}
        for ref in refs:
            for layer in self.manifest(ref)[1]["layers"]:
                sizes[layer["digest"]] = layer["size"]
        return sizes

    def layer_tar(self, digest: str) -> Iterator[bytes]:
        """The layer's tar, as it was when built: tar-split's entries are raw segments (headers, padding) and files,
        whose bytes are read from the layer's diff directory."""
        layer_id = self.layers[digest]["id"]
        diff = self.root / "overlay" / layer_id / "diff"
        with gzip.open(self.root / "overlay-layers" / f"{layer_id}.tar-split.gz", "rt") as entries:
            for line in entries:
                entry = json.loads(line)
                if entry["type"] == 2:  # a segment
                    yield base64.b64decode(entry["payload"])
                elif entry.get("size"):  # a file's contents
                    name = base64.b64decode(entry["name_raw"]) if "name_raw" in entry else entry["name"].encode()
                    # Within the layer: tar-split names are relative and a link is never followed out of it.
                    path = (diff / name.decode("utf-8", "surrogateescape")).resolve()
                    if not path.is_relative_to(diff.resolve()):
                        raise ValueError(f"layer {digest}: {name!r} leaves the layer")
                    with open(path, "rb") as file:
                        left = entry["size"]
                        while left:
                            chunk = file.read(min(left, CHUNK))
                            if not chunk:
                                raise ValueError(f"layer {digest}: {name!r} is shorter than its tar entry")
                            left -= len(chunk)
                            yield chunk

    def write_oci_layout(self, archive: tarfile.TarFile, refs: Iterable[str], skip: set[str]) -> None:
        """`refs` as an OCI image layout in `archive`: manifests and configs, and the layers whose digests are not
        in `skip`; each named by the index (io.containerd.image.name)."""
        index, written = [], set(skip)

        def blob(digest: str, size: int, chunks: Iterable[bytes]) -> None:
            if digest in written:
                return
            written.add(digest)
            info = tarfile.TarInfo(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            info.size = size
            archive.addfile(info, _Reader(chunks, digest, size))

        for ref in refs:
            image = self.image(ref)
            raw, manifest = self.manifest(ref)
            config = self.big_data(image, manifest["config"]["digest"])
            blob(manifest["config"]["digest"], len(config), [config])
            for layer in manifest["layers"]:
                blob(layer["digest"], layer["size"], self.layer_tar(layer["digest"]))
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
            blob(digest, len(raw), [raw])
            index.append({"mediaType": manifest["mediaType"], "digest": digest, "size": len(raw),
                          "annotations": {"io.containerd.image.name": ref}})
        for name, document in (("oci-layout", {"imageLayoutVersion": "1.0.0"}),
                               ("index.json", {"schemaVersion": 2, "manifests": index})):
            data = json.dumps(document).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


class _Reader(io.RawIOBase):
    """A file-like view of chunks, for tarfile (which reads exactly the size it was told), that checks the digest
    once the last byte is read."""

    def __init__(self, chunks: Iterable[bytes], digest: str, size: int):
        self._chunks = iter(chunks)
        self._current, self._pos = b"", 0
        self._hash = hashlib.sha256()
        self._digest, self._size, self._read = digest, size, 0

    def read(self, n: int = -1) -> bytes:
        parts, want = [], n
        while want != 0:
            if self._pos == len(self._current):
                self._current, self._pos = next(self._chunks, None), 0
                if self._current is None:
                    self._current = b""
                    break
                continue
            take = len(self._current) - self._pos if want < 0 else min(want, len(self._current) - self._pos)
            parts.append(self._current[self._pos:self._pos + take])
            self._pos += take
            want = want - take if want > 0 else want
        out = b"".join(parts)
        self._hash.update(out)
        self._read += len(out)
        if self._read == self._size and "sha256:" + self._hash.hexdigest() != self._digest:
            raise ValueError(f"{self._digest}: the {self._size} bytes rebuilt have another digest")
        return out
