"""The real node (tests/realnode) and its images, for the autoscaling components that run beside it."""

from tests.containers.test_quickstart_in_containers import images  # noqa: F401  (node_images's)
from tests.realnode.conftest import node_images, real_node  # noqa: F401
