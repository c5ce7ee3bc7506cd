"""Regenerate `open_inference_v2_pb2.py` (+ `.pyi`) from the `.proto` beside it.

The generated modules are committed, so neither the server image nor a user needs grpcio-tools; a test
regenerates them into a temporary folder and fails when the committed ones are stale. grpcio-tools is
pinned (test extra) to a release whose protoc emits code for the oldest protobuf runtime we support.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = PROTO_DIR / "open_inference_v2.proto"
# The source root: protoc names the file by its path below it, a name unique in the descriptor pool.
SOURCE_ROOT = PROTO_DIR.parents[2]


def generate(out_root: Path = SOURCE_ROOT) -> list[Path]:
    """Run protoc on the proto file, writing below `out_root` (the package layout); returns the files."""
    from grpc_tools import protoc  # test/dev tooling only

    out_root.mkdir(parents=True, exist_ok=True)
    relative = PROTO_FILE.relative_to(SOURCE_ROOT)
    args = ["protoc", f"-I{SOURCE_ROOT}", f"--python_out={out_root}", f"--pyi_out={out_root}", str(relative)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE}")
    stem = out_root / relative.parent / relative.stem
    return [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2.pyi")]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE_ROOT):
        print(path)
