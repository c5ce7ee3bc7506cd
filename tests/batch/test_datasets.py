"""Datasets, sharding and the mapping onto a model's inputs, and the bad input each refuses with its place."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slimserve.batch.datasets import DataFile, column_names, count_records, list_dataset, read_batches
from slimserve.batch.errors import DatasetError, RecordError
from slimserve.batch.inputs import check_id_column, map_columns, model_inputs
from slimserve.batch.sharding import shard_ranges
from slimserve.models.servable import TensorSpec
from tests.batch.conftest import write_jsonl

ROWS = 10
DIGIT_INPUT = (TensorSpec("input", "FP32", (-1, 64)),)
TEXT_INPUT = (TensorSpec("text", "BYTES", (-1,)),)


@pytest.fixture
def pixels(digits) -> np.ndarray:
    return digits[:ROWS]


def write_each_format(folder, pixels) -> dict[str, DataFile]:
    """The same records as JSON Lines, Parquet, .npy and .npz."""
    ids = [f"d{i}" for i in range(ROWS)]
    write_jsonl(folder / "a.jsonl", [{"pixels": row.tolist(), "key": key} for row, key in zip(pixels, ids)])
    pq.write_table(pa.table({"pixels": pixels.tolist(), "key": ids}), folder / "b.parquet", row_group_size=3)
    np.save(folder / "c.npy", pixels)
    np.savez_compressed(folder / "d.npz", pixels=pixels, key=np.array(ids))
    return {file.format: file for file in list_dataset(f"file://{folder}/")}


def test_every_format_streams_the_same_records_in_batches_from_any_start(tmp_path, pixels):
    files = write_each_format(tmp_path, pixels)
    assert list(files) == ["jsonl", "parquet", "npy", "npz"]  # sorted by name
    for data_format, file in files.items():
        path = file.fetch()
        assert count_records(path, file) == ROWS
        column = column_names(path, file)[0] if data_format == "npy" else "pixels"
        batches = list(read_batches(path, file, [column], 2, 9, batch_size=3))
        assert [list(batch.rows) for batch in batches] == [[2, 3, 4], [5, 6, 7], [8]], data_format
        got = np.concatenate([np.asarray(batch.columns[column], dtype=np.float32) for batch in batches])
        np.testing.assert_array_equal(got, pixels[2:9], err_msg=data_format)
    assert batches[0].where(1) == "d.npz row 3"
    jsonl = files["jsonl"]
    (first,) = read_batches(jsonl.fetch(), jsonl, ["key"], 4, 5, batch_size=8)
    assert first.where(0) == "a.jsonl line 5" and first.columns["key"] == ["d4"]


def test_a_prefix_takes_its_files_sorted_and_leaves_hidden_ones_out(tmp_path):
    for name in ("b.jsonl", "a/c.jsonl", "_SUCCESS", ".staging/x.jsonl", "a/.part.tmp"):
        write_jsonl(tmp_path / name, [{"text": "x"}])
    assert [file.name for file in list_dataset(f"file://{tmp_path}/")] == ["a/c.jsonl", "b.jsonl"]
    write_jsonl(tmp_path / "notes.txt", [])
    with pytest.raises(DatasetError, match=r"cannot tell the format of 'notes.txt'.*spec.input.format"):
        list_dataset(f"file://{tmp_path}/")
    assert [file.format for file in list_dataset(f"file://{tmp_path}/", "jsonl")] == ["jsonl"] * 3


def test_shards_split_files_whole_and_one_file_into_record_ranges(tmp_path):
    files = [DataFile(f"file:///{name}", name, "jsonl") for name in "abcde"]
    split = [[(r.file.name, r.start, r.stop) for r in shard_ranges(files, i, 2, lambda f: 7)] for i in range(2)]
    assert split == [[("a", 0, 7), ("b", 0, 7)], [("c", 0, 7), ("d", 0, 7), ("e", 0, 7)]]
    ranges = [shard_ranges(files[:1], i, 3, lambda f: 10)[0] for i in range(3)]
    assert [(r.start, r.stop) for r in ranges] == [(0, 3), (3, 6), (6, 10)]
    assert shard_ranges(files[:2], 0, 3, lambda f: 1) == []  # more shards than files: an empty part


def test_fields_map_columns_onto_inputs_and_name_what_is_missing():
    assert map_columns(TEXT_INPUT, None, ["text", "id"], "x.parquet") == {"text": "text"}
    assert map_columns(TEXT_INPUT, {"text": "sentence"}, None, "x.jsonl") == {"text": "sentence"}
    assert map_columns(DIGIT_INPUT, None, ["digits"], "digits.npy") == {"input": "digits"}  # one column, one input
    with pytest.raises(DatasetError, match=r"spec.input.fields.text: x.parquet has no column 'sentence' .*its columns: body"):
        map_columns(TEXT_INPUT, {"text": "sentence"}, ["body"], "x.parquet")
    with pytest.raises(DatasetError, match=r"spec.input.fields: 'txt' is not an input of the model \(its inputs: text\)"):
        map_columns(TEXT_INPUT, {"txt": "body"}, ["body"], "x.parquet")
    with pytest.raises(DatasetError, match=r"spec.input.idField: x.parquet has no column 'uid'"):
        check_id_column("uid", ["text"], "x.parquet")


def _first_batch(path, data_format, column):
    file = DataFile(f"file://{path}", path.name, data_format)
    return next(read_batches(path, file, [column], 0, 100, batch_size=100))


def test_unknown_keys_and_wrong_types_name_the_record(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"pixels": [0.5] * 64}, {"pixels": [1.0] * 64}, {"pixel": [1.0] * 64}])
    with pytest.raises(RecordError, match=r"x.jsonl line 3: no key 'pixels' \(its keys: pixel\)"):
        _first_batch(path, "jsonl", "pixels")
    path.write_text('{"pixels": [0.5]}\n\n{"pixels": "dark"}\n')
    batch = _first_batch(path, "jsonl", "pixels")
    with pytest.raises(RecordError, match=r"x.jsonl line 1: column 'pixels' \(the model's input 'input'\): expected shape \[64\]"):
        model_inputs(DIGIT_INPUT, {"input": "pixels"}, batch)
    path.write_text('{"pixels": [%s]}\n\n{"pixels": "dark"}\n' % ",".join(["1"] * 64))
    with pytest.raises(RecordError, match=r"x.jsonl line 3: .*expected numbers for FP32, got str 'dark'"):
        model_inputs(DIGIT_INPUT, {"input": "pixels"}, _first_batch(path, "jsonl", "pixels"))
    path.write_text('{"text": "fine"}\n{"text": 7}\n')
    with pytest.raises(RecordError, match=r"x.jsonl line 2: column 'text' .*expected text, got int 7"):
        model_inputs(TEXT_INPUT, {"text": "text"}, _first_batch(path, "jsonl", "text"))
    path.write_text('{"text": "fine"}\n{"text": "cut\n')
    with pytest.raises(RecordError, match=r"x.jsonl line 2: not valid JSON"):
        _first_batch(path, "jsonl", "text")


def test_an_empty_dataset_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    file = list_dataset(f"file://{tmp_path}/empty.jsonl")[0]
    with pytest.raises(DatasetError, match="empty.jsonl holds no records"):
        shard_ranges([file], 0, 2, lambda f: count_records(f.fetch(), f))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="nothing/ holds no data files"):
        list_dataset(f"file://{tmp_path}/nothing/")


def test_a_truncated_parquet_file_is_refused(tmp_path, pixels):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"pixels": pixels.tolist()}), path)
    path.write_bytes(path.read_bytes()[:-100])
    file = list_dataset(f"file://{path}")[0]
    with pytest.raises(DatasetError, match=r"x.parquet: not a readable Parquet file \(truncated or corrupt\?\)"):
        count_records(path, file)


def test_arrays_that_need_pickle_are_refused_before_numpy_reads_them(tmp_path):
    objects = np.array([{"a": 1}, None], dtype=object)
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    np.savez(tmp_path / "mixed.npz", fine=np.zeros((2, 3)), bad=objects)
    for name, where in (("objects.npy", "objects.npy"), ("mixed.npz", "mixed.npz array bad.npy")):
        file = list_dataset(f"file://{tmp_path}/{name}")[0]
        with pytest.raises(DatasetError, match=rf"{where}: holds Python objects, which only pickle can load"):
            count_records(file.fetch(), file)
