"""Single objects on the real S3-compatible server, as checkpoints use them: one PUT, a read bounded in size
(refused, leaving nothing behind, when the object is larger), a missing object told apart from a failure,
and a prefix deleted whole."""

from __future__ import annotations

import pytest

from slimserve.api.compression_job import S3Spec
from slimserve.artifacts.errors import StorageError
from slimserve.artifacts.storage import delete_prefix, get_object, put_object


def test_an_object_is_read_back_within_its_bound_and_a_larger_one_is_refused(s3_env, tmp_path):
    s3 = S3Spec(endpoint=s3_env.endpoint)
    source = tmp_path / "source"
    source.write_bytes(b"x" * 1000)
    put_object(source, f"s3://{s3_env.bucket}/objects/one", s3)
    put_object(source, f"s3://{s3_env.bucket}/objects/two", s3)

    assert get_object(f"s3://{s3_env.bucket}/objects/one", tmp_path / "read", 1000, s3)
    assert (tmp_path / "read").read_bytes() == b"x" * 1000
    with pytest.raises(StorageError, match="1000 bytes, more than the 999 expected"):
        get_object(f"s3://{s3_env.bucket}/objects/one", tmp_path / "refused", 999, s3)
    assert not (tmp_path / "refused").exists()
    assert get_object(f"s3://{s3_env.bucket}/objects/none", tmp_path / "none", 1000, s3) is False

    delete_prefix(f"s3://{s3_env.bucket}/objects", s3)
    assert s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="objects/").get("KeyCount") == 0
