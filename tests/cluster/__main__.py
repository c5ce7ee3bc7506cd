"""Run the test cluster by hand: ``python -m tests.cluster`` (or ``make dev-cluster``).

Builds the binaries if needed, starts the control plane, prints how to reach it,
and keeps it running until Ctrl-C.
"""

from __future__ import annotations

import signal
import sys

from .controlplane import ControlPlane


def main() -> int:
    # Ctrl-C stops the cluster, also when started from a shell that ignores SIGINT (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    plane = ControlPlane.start()
    try:
        print(f"# control plane up in {plane.started_in:.1f}s at {plane.server}; logs in {plane.workdir / 'logs'}")
        print(f"export KUBECONFIG={plane.kubeconfig}")
        print(f"export PATH={plane.bin_dir}:$PATH")
        print("# Ctrl-C to stop it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    finally:
        plane.stop()
        print("\n# control plane stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
