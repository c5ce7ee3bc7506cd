"""`slimserve --help` and argument errors answer without building the resource models."""

import json
import subprocess
import sys

import slimserve.api


def test_building_the_command_line_loads_no_resource_model():
    probe = (
        "import json, sys; from slimserve.cli.main import build_parser; build_parser(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('slimserve.api.'))))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout)
    assert "slimserve.api.workload" in loaded  # the flags' defaults come from the pod contract
    assert not {"slimserve.api.compression_job", "slimserve.api.model_service", "slimserve.api.common"} & set(loaded)


def test_the_package_still_exports_every_model():
    for name in slimserve.api.__all__:
        assert getattr(slimserve.api, name) is not None
    assert slimserve.api.CompressionJob.kind == "CompressionJob"
