"""The real node fixture: one kubelet on containerd joined to the session's control plane as pool `real`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.containers.test_quickstart_in_containers import images  # noqa: F401  (the fixture)

from .node import NodeBusy, RealNode, cache_dir, cannot_run

# Imported images stay in containerd's store (in the cache); an import must leave this much of the disk free.
MIN_FREE_DISK = 4 * 2**30


# Module scope: the node leaves the session's control plane with the last test that uses it, so later tests
# (the kwok pools' own) see only the nodes they expect.
@pytest.fixture(scope="module")
def real_node(control_plane) -> Iterator[RealNode]:
    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    try:
        node = RealNode.join(control_plane)
    except NodeBusy as busy:
        pytest.skip(str(busy))
    try:
        yield node
    finally:
        node.leave()
    left = node.leftovers()
    assert not left, "the real node left behind:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def node_images(real_node, images) -> dict[str, str]:
    """The images of this checkout (podman's, content-tagged) in the node's containerd: a warm run imports nothing,
    a new build keeps only the layers containerd lacks (most are shared with the build before)."""
    wanted = [ref for ref in images.values() if ref not in real_node.images()]
    if wanted:
        free = shutil.disk_usage(cache_dir()).free
        need = real_node.import_disk_need(*wanted) + MIN_FREE_DISK
        if free < need:
            pytest.skip(f"importing {wanted} into containerd needs {need / 2**30:.1f} GiB free; "
                        f"{free / 2**30:.1f} GiB are")
        real_node.import_from_podman(*wanted)
    real_node.remove_images_except(images.values())  # earlier builds': containerd frees the layers only they use
    return images
