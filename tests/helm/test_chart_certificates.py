"""The chart's cert-manager Certificates for ModelServices' TLS Secrets: only when an issuer is named, for the
names the Service answers, in the Secret a ModelService's spec.tls.secretName then names."""

from __future__ import annotations

import pytest

from slimserve.api.model_service import TlsSpec
from tests.helm.chart import find, render, template

SERVICES = [{"name": "digits", "namespace": "ml-team-a", "dnsNames": ["digits.example.com"]},
            {"name": "minilm", "namespace": "ml-team-b"}]


def test_no_issuer_no_certificate():
    assert find(render({"servers": {"certificates": {"modelServices": SERVICES}}}), "Certificate") == []


def test_one_certificate_per_model_service_for_its_service_names():
    issuer = {"name": "internal-ca", "kind": "ClusterIssuer"}
    values = {"servers": {"certificates": {"issuerRef": issuer, "modelServices": SERVICES, "duration": "720h"}},
              "workloads": {"clusterDomain": "corp.internal"}}
    certificates = {c["metadata"]["namespace"]: c for c in find(render(values), "Certificate")}
    assert set(certificates) == {"ml-team-a", "ml-team-b"}
    digits = certificates["ml-team-a"]
    assert digits["apiVersion"] == "cert-manager.io/v1" and digits["metadata"]["name"] == "digits-tls"
    spec = digits["spec"]
    assert spec["secretName"] == "digits-tls" and TlsSpec(secret_name=spec["secretName"])  # a valid spec.tls
    assert spec["issuerRef"] == {**issuer, "group": "cert-manager.io"}
    assert spec["dnsNames"] == ["digits", "digits.ml-team-a", "digits.ml-team-a.svc",
                                "digits.ml-team-a.svc.corp.internal", "digits.example.com"]
    assert (spec["duration"], spec["renewBefore"]) == ("720h", "360h")
    assert "server auth" in spec["usages"] and spec["privateKey"]["rotationPolicy"] == "Always"
    assert certificates["ml-team-b"]["spec"]["dnsNames"][-1] == "minilm.ml-team-b.svc.corp.internal"


@pytest.mark.parametrize("certificates,field", [
    ({"issuerRef": {"name": "ca", "kind": "Vault"}}, "kind"),
    ({"modelServices": [{"name": "digits"}]}, "namespace"),
    ({"modelServices": [{"name": "Digits", "namespace": "a"}]}, "name"),
    ({"renewBefore": "two weeks"}, "renewBefore"),
    ({"issuer": "ca"}, "issuer"),
])
def test_bad_certificate_values_are_rejected_naming_the_field(certificates, field):
    out = template({"servers": {"certificates": certificates}}, check=False)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr
    assert field in out.stderr, out.stderr
