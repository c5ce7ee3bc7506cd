"""How an invalid spec reads (one `field.path: message` line per problem, kubectl's path syntax), and the one
manifest reader: documents, and the resource of a kind and name picked among them."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from slimserve.api import CompressionJobSpec, ModelServiceSpec
from slimserve.api.field_errors import field_errors, field_path
from slimserve.api.manifests import ManifestError, load_documents, parse_manifest, pick_manifest, read_documents

SPEC = {"model": {"uri": "builtin://digits-mlp"}, "steps": [{"prune": {"amount": 0.5}}], "output": {"uri": "file:///tmp/x"}}


def errors_of(model, data) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return caught.value


def job(name: str, **spec) -> dict:
    return {"apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": name},
            "spec": {**SPEC, **spec}}


def test_paths_read_as_kubectl_explain_writes_them():
    assert field_path(("spec", "steps", 0, "prune", "amount")) == "spec.steps[0].prune.amount"
    assert field_path(("steps", 1)) == "steps[1]"
    assert field_path(()) == ""


def test_one_line_per_problem_under_the_root():
    exc = errors_of(CompressionJobSpec, {**SPEC, "steps": [{"prune": {"amount": 1.5, "bogus": 1}}, {"quantize": {"method": "int9"}}]})
    lines = field_errors(exc, root=("spec",))
    assert lines[:2] == ["spec.steps[0].prune.amount: Input should be less than 1", "spec.steps[0].prune.bogus: unknown field"]
    assert lines[2].startswith("spec.steps[1].quantize.method: Input should be 'int8-dynamic'")
    assert len(lines) == 3


def test_a_rule_that_names_its_field_is_not_named_twice():
    exc = errors_of(CompressionJobSpec, {**SPEC, "steps": [{"quantize": {"method": "int8-dynamic"}}, {"prune": {"amount": 0.5}}]})
    assert field_errors(exc, root=("spec",)) == [
        "spec.steps: quantize must be the last step (nothing can be pruned or distilled after it)"
    ]
    exc = errors_of(ModelServiceSpec, {"model": {"uri": "builtin://digits-mlp"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}})
    assert field_errors(exc, root=("spec",)) == ["spec.autoscaling.minReplicas must not exceed maxReplicas"]


def test_validator_messages_lose_pydantics_prefix_and_unrooted_errors_keep_their_message():
    exc = errors_of(CompressionJobSpec, {**SPEC, "steps": [{}]})
    assert field_errors(exc, root=("spec",)) == ["spec.steps[0]: a step sets exactly one of prune, quantize, distill (got none)"]
    assert field_errors(errors_of(CompressionJobSpec, "not a mapping")) == [
        "Input should be a valid dictionary or instance of CompressionJobSpec"
    ]


def test_an_alias_names_the_option_that_set_a_field():
    exc = errors_of(CompressionJobSpec, {**SPEC, "output": {"uri": "ftp://x/y"}})
    (line,) = field_errors(exc, root=("spec",), aliases={"spec.output.uri": "--output"})
    assert line.startswith("--output: String should match pattern")


def test_a_whole_manifest_reads_the_same_as_its_spec_alone():
    bad = {**SPEC, "steps": [{"prune": {"amount": 1.5}}]}
    with pytest.raises(ManifestError) as caught:
        parse_manifest(job("digits", **bad), "file.yaml#0")
    assert caught.value.errors == field_errors(errors_of(CompressionJobSpec, bad), root=("spec",))
    assert str(caught.value) == "file.yaml#0 (CompressionJob digits): spec.steps[0].prune.amount: Input should be less than 1"


def test_documents_of_yaml_or_json_text(tmp_path):
    assert read_documents("a: 1\n---\n---\n{\"b\": 2}\n", "text") == [{"a": 1}, {"b": 2}]
    with pytest.raises(ManifestError, match=r"^text: not valid YAML or JSON: "):
        read_documents("model: [unclosed", "text")
    with pytest.raises(ManifestError, match="nope.yaml: file not found"):
        load_documents(tmp_path / "nope.yaml")
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump_all([job("a"), job("b")]))
    assert [d["metadata"]["name"] for d in load_documents(tmp_path / "jobs.yaml")] == ["a", "b"]


def test_picking_the_manifest_of_a_kind_and_name():
    service = {"apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": "a"}, "spec": {}}
    documents = [job("first"), service, job("second")]
    assert pick_manifest(documents, "CompressionJob", "f.yaml", "second")["metadata"]["name"] == "second"
    assert pick_manifest([service, job("only")], "CompressionJob", "f.yaml")["metadata"]["name"] == "only"
    assert pick_manifest(documents, "ModelService", "f.yaml") is service
    refusals = {
        "f.yaml: 2 CompressionJobs (first, second); choose one with --name": (documents, None),
        "f.yaml: --name third: no CompressionJob of that name (found: first, second)": (documents, "third"),
        "f.yaml: --name twin: 2 CompressionJobs of that name": ([job("twin"), job("twin")], "twin"),
        "f.yaml: no CompressionJob in the file (found: ModelService)": ([service], None),
        "f.yaml: expected a CompressionJob manifest (a mapping), got list": ([job("a"), [1]], None),
        "f.yaml: empty; expected a CompressionJob manifest": ([], None),
    }
    for message, (docs, name) in refusals.items():
        with pytest.raises(ManifestError) as caught:
            pick_manifest(docs, "CompressionJob", "f.yaml", name, name_option="--name")
        assert str(caught.value) == message
