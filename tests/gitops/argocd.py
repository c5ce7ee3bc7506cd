"""Running Argo CD's resource health checks (Lua) the way Argo CD does: `obj` is the live object, the script
returns {status, message}. Argo CD runs gopher-lua, a Lua 5.1, hence lupa's Lua 5.1 runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from lupa import lua51

REPO = Path(__file__).resolve().parents[2]
HEALTH_DIR = REPO / "charts" / "slimserve" / "health"
ARGOCD_CM = HEALTH_DIR / "argocd-cm.yaml"
# argocd-cm key -> the script shipped for it.
SCRIPTS = {
    "resource.customizations.health.slimserve.io_CompressionJob": HEALTH_DIR / "compressionjob.lua",
    "resource.customizations.health.slimserve.io_ModelService": HEALTH_DIR / "modelservice.lua",
    "resource.customizations.health.slimserve.io_BatchInference": HEALTH_DIR / "batchinference.lua",
}
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def run_health_check(script: str, obj: dict[str, Any]) -> dict[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    if result is None:
        raise AssertionError("the health script returned nothing")
    return {key: result[key] for key in ("status", "message")}


def argocd_cm() -> dict[str, Any]:
    """The argocd-cm snippet with the scripts embedded (what `python -m tests.gitops.argocd` prints)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd",
                     "labels": {"app.kubernetes.io/part-of": "argocd"}},
        "data": {key: path.read_text() for key, path in SCRIPTS.items()},
    }


class _Literal(str):
    """A string YAML writes as a block (|), so that the scripts stay readable in the ConfigMap."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|"))


def render_argocd_cm() -> str:
    cm = argocd_cm()
    cm["data"] = {key: _Literal(text) for key, text in cm["data"].items()}
    header = (
        "# Argo CD health checks of SlimServe's resources: merge `data` into the argocd-cm ConfigMap\n"
        "# (kubectl -n argocd patch configmap argocd-cm --patch-file charts/slimserve/health/argocd-cm.yaml).\n"
        "# Generated from the .lua files beside it by `python -m tests.gitops.argocd`; do not edit by hand.\n"
    )
    return header + yaml.dump(cm, Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    ARGOCD_CM.write_text(render_argocd_cm())
    print(f"wrote {ARGOCD_CM.relative_to(REPO)}")
