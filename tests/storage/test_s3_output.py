"""An s3:// output the compressor cannot write (a bucket that does not exist) fails `slimserve compress` before its
first step, as StorageError, against the real S3-compatible server."""

from __future__ import annotations

from tests.compression.test_unwritable_output import _assert_failed_before_the_first_step, _compress
from tests.storage.conftest import ACCESS_KEY, SECRET_KEY


def test_output_in_a_missing_bucket_fails_before_the_first_step(s3_server, tmp_path):
    done, events = _compress(
        tmp_path, "s3://no-such-bucket/artifacts/slim", {"s3": {"endpoint": s3_server.endpoint, "region": "us-east-1"}},
        AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, SLIMSERVE_CACHE=str(tmp_path / "cache"),
    )
    _assert_failed_before_the_first_step(tmp_path, done, events, "cannot write to bucket 'no-such-bucket'", "NoSuchBucket")


def test_output_in_an_existing_bucket_leaves_no_probe_behind(s3_env, tmp_path):
    from slimserve.api.compression_job import S3Spec
    from slimserve.artifacts.artifact import check_output

    check_output(f"s3://{s3_env.bucket}/probed/slim", S3Spec(endpoint=s3_env.endpoint))
    assert s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="probed/").get("KeyCount") == 0
