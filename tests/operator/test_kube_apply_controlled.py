"""`kube.apply_controlled` on the real API server: a child is created, or changed only while the applying
resource controls it; anyone else's object is left exactly as it is, even one created during the apply."""

from __future__ import annotations

import json

import pytest

from slimserve.controller import kube
from tests.cluster.helpers import apply, get

OWNER_UID = "0b6a4f36-1d2c-4c8e-9a51-6f1f3d7c2a10"
# The owners here exist only as uids. Once the garbage collector knows the ModelService kind (it rescans API
# discovery every 30 s after the CRDs are installed) it deletes, within a second, a child whose ModelService
# is missing, even between two applies of one test; an apiVersion no API serves keeps it out of that.
UNSERVED_OWNER_API_VERSION = "slimserve.io/v1alpha0"


def service(namespace: str, name: str = "digits", *, owner_uid: str = OWNER_UID, labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {"app.kubernetes.io/name": "slimserve"},
            "ownerReferences": [{"apiVersion": UNSERVED_OWNER_API_VERSION, "kind": "ModelService", "name": name,
                                 "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "selector": {"app.kubernetes.io/instance": name},
            "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
                      {"name": "grpc", "port": 9000, "targetPort": "grpc", "protocol": "TCP"}],
        },
    }


def hand_made_service(namespace: str, name: str = "digits") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "mine"}, "ports": [{"name": "web", "port": 80}]}}


def managers(obj: dict) -> set[tuple[str, str]]:
    return {(e["manager"], e["operation"]) for e in obj["metadata"]["managedFields"] if not e.get("subresource")}


# ---- the pure part: which fields are taken back -----------------------------------------------------------


def test_only_stated_fields_of_other_managers_are_reclaimed():
    manifest = service("ns")
    ours = {"manager": kube.FIELD_MANAGER, "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:ports": {'k:{"port":8080,"protocol":"TCP"}': {}}}}}
    edit = {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:note": {}}, "f:labels": {"f:app.kubernetes.io/name": {}}},
                         "f:spec": {"f:ports": {'k:{"port":8081,"protocol":"TCP"}': {".": {}, "f:name": {}}},
                                    "f:sessionAffinity": {}}}}
    status = {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "subresource": "status",
              "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {}}}}
    live = {"metadata": {"managedFields": [ours, edit, status]}}

    reclaimed = kube.reclaimed_managed_fields(live, manifest)

    mine, theirs, untouched = reclaimed
    assert mine["manager"] == kube.FIELD_MANAGER and mine["operation"] == "Apply"
    assert set(mine["fieldsV1"]["f:spec"]["f:ports"]) == {'k:{"port":8080,"protocol":"TCP"}',
                                                          'k:{"port":8081,"protocol":"TCP"}'}
    assert mine["fieldsV1"]["f:metadata"] == {"f:labels": {"f:app.kubernetes.io/name": {}}}
    # What the operator does not state stays with whoever set it.
    assert theirs["fieldsV1"] == {"f:metadata": {"f:annotations": {"f:note": {}}}, "f:spec": {"f:sessionAffinity": {}}}
    assert untouched == status
    assert kube.reclaimed_managed_fields({"metadata": {"managedFields": [ours, status]}}, manifest) is None


def test_conflict_names_the_object_and_its_holder():
    conflict = kube.ChildConflict("Service", "digits", "default", 'no controller (made by field manager "kubectl")')
    assert str(conflict) == 'Service default/digits exists and is controlled by no controller (made by field manager "kubectl")'
    hand_made = {"metadata": {"managedFields": [
        {"manager": "late", "operation": "Update", "time": "2026-01-02T00:00:00Z"},
        {"manager": "kubectl-create", "operation": "Update", "time": "2026-01-01T00:00:00Z"},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2025-01-01T00:00:00Z"},
    ]}}
    assert kube.holder_of(hand_made) == 'no controller (made by field manager "kubectl-create")'
    owned = {"metadata": {"ownerReferences": [{"kind": "ModelService", "name": "other", "uid": "1234", "controller": True}]}}
    assert kube.holder_of(owned) == "ModelService other (uid 1234)"


# ---- on the API server ----------------------------------------------------------------------------------


@pytest.mark.cluster
def test_creates_then_updates_its_own_child_and_drops_what_it_stops_stating(control_plane, namespace):
    with control_plane.api_client() as api:
        created = kube.apply_controlled(api, service(namespace, labels={"a": "1", "b": "2"}), OWNER_UID)
        assert managers(created) == {(kube.FIELD_MANAGER, "Apply")}
        updated = kube.apply_controlled(api, service(namespace, labels={"a": "1"}), OWNER_UID)
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["labels"] == {"a": "1"}


@pytest.mark.cluster
@pytest.mark.parametrize("holder", ["hand-made", "another owner"])
def test_someone_elses_object_is_left_alone(control_plane, namespace, holder):
    cp = control_plane
    if holder == "hand-made":
        apply(cp, namespace, hand_made_service(namespace))
        expected = 'no controller (made by field manager "kubectl-client-side-apply")'
    else:
        with cp.api_client() as api:
            kube.apply_controlled(api, service(namespace, owner_uid="1234"), "1234")
        expected = "ModelService digits (uid 1234)"
    before = get(cp, namespace, "service", "digits")
    with cp.api_client() as api, pytest.raises(kube.ChildConflict) as raised:
        kube.apply_controlled(api, service(namespace), OWNER_UID)
    assert (raised.value.kind, raised.value.name, raised.value.namespace) == ("Service", "digits", namespace)
    assert raised.value.holder == expected
    assert get(cp, namespace, "service", "digits")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


@pytest.mark.cluster
def test_an_object_created_between_read_and_apply_is_not_taken_over(control_plane, namespace, monkeypatch):
    cp = control_plane
    real_read = kube.read_named

    def read_then_lose_the_race(api, manifest):
        seen = real_read(api, manifest)
        if seen[0] is None and not get(cp, namespace, "services")["items"]:
            apply(cp, namespace, hand_made_service(namespace))  # another writer, right after the read
        return seen

    monkeypatch.setattr(kube, "read_named", read_then_lose_the_race)
    with cp.api_client() as api, pytest.raises(kube.ChildConflict):
        kube.apply_controlled(api, service(namespace), OWNER_UID)
    theirs = get(cp, namespace, "service", "digits")
    assert "ownerReferences" not in theirs["metadata"]
    assert theirs["spec"]["selector"] == {"app": "mine"} and [p["port"] for p in theirs["spec"]["ports"]] == [80]


@pytest.mark.cluster
def test_hand_edits_by_other_managers_are_undone(control_plane, namespace):
    cp = control_plane
    with cp.api_client() as api:
        kube.apply_controlled(api, service(namespace), OWNER_UID)
    edited = get(cp, namespace, "service", "digits")
    edited["spec"]["ports"][0]["port"] = 8081  # kubectl edit: the whole object back, as an update
    edited["spec"]["selector"]["extra"] = "x"
    del edited["spec"]["ports"][1]
    cp.kubectl("replace", "-n", namespace, "-f", "-", input=json.dumps(edited))
    with cp.api_client() as api:
        restored = kube.apply_controlled(api, service(namespace), OWNER_UID)
    assert [(p["name"], p["port"]) for p in restored["spec"]["ports"]] == [("http", 8080), ("grpc", 9000)]
    assert restored["spec"]["selector"] == {"app.kubernetes.io/instance": "digits"}
    assert managers(restored) == {(kube.FIELD_MANAGER, "Apply")}


@pytest.mark.cluster
def test_delete_controlled_deletes_only_its_own(control_plane, namespace):
    cp = control_plane
    apply(cp, namespace, hand_made_service(namespace, "theirs"))
    with cp.api_client() as api:
        kube.apply_controlled(api, service(namespace, "mine"), OWNER_UID)
        assert not kube.delete_controlled(api, "v1", "Service", namespace, "theirs", OWNER_UID)
        assert kube.delete_controlled(api, "v1", "Service", namespace, "mine", OWNER_UID)
        assert not kube.delete_controlled(api, "v1", "Service", namespace, "absent", OWNER_UID)
    assert get(cp, namespace, "service", "theirs")["spec"]["selector"] == {"app": "mine"}
