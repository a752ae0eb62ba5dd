"""Bad input stops loading with a DataError that names file, row and column."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sid_models.data.loaders import load_home_depot, load_parquet_layout, load_wands
from sid_models.data.schema import DataError

FIXTURES = Path(__file__).parent / "fixtures"
SCALE = {"minimum": 1.0, "maximum": 3.0, "threshold": 2.5, "gain_offset": 1.0}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A valid dataset in the project's parquet layout; tests break one thing in it."""
    pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["oak shelf", "steel drill", "brass lamp"],
                  "brand": ["cedar", None, "lumen"]}).to_parquet(tmp_path / "items.parquet", index=False)
    pd.DataFrame({"query_id": [1, 2], "text": ["shelf", "cordless drill"]}).to_parquet(
        tmp_path / "queries.parquet", index=False)
    pd.DataFrame({"query_id": [1, 1, 2], "item_id": ["a", "c", "b"], "relevance": [3.0, 1.0, 2.67]}).to_parquet(
        tmp_path / "judgments.parquet", index=False)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "tiny", "scale": SCALE}))
    return tmp_path


def _rewrite(file: Path, change) -> None:
    change(pd.read_parquet(file)).to_parquet(file, index=False)


def _error(folder: Path) -> DataError:
    with pytest.raises(DataError) as error:
        load_parquet_layout(folder)
    return error.value


def test_valid_store_loads(store):
    dataset = load_parquet_layout(store)
    assert dataset.queries["query_id"].tolist() == ["1", "2"] and len(dataset.judgments) == 3


def test_missing_column_names_file_and_column(store):
    _rewrite(store / "items.parquet", lambda frame: frame.drop(columns="title"))
    error = _error(store)
    assert "missing column" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "items.parquet"), None, "title")


def test_wrong_type_names_row(store):
    _rewrite(store / "judgments.parquet", lambda frame: frame.assign(relevance=[3.0, float("inf"), 2.0]))
    error = _error(store)
    assert "inf is not a number" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "judgments.parquet"), 2, "relevance")


def test_numbers_stored_as_strings_in_parquet_are_a_wrong_type(store):
    _rewrite(store / "judgments.parquet",
             lambda frame: frame.assign(relevance=pd.Series(["3", "1", "2"], dtype=object)))
    error = _error(store)
    assert "expected a numeric column" in str(error)
    assert (error.file, error.column) == (str(store / "judgments.parquet"), "relevance")


def test_control_characters_in_an_id_are_rejected(store):
    _rewrite(store / "items.parquet", lambda frame: frame.assign(item_id=["a", "b\x00", "c"]))
    _rewrite(store / "judgments.parquet", lambda frame: frame.assign(item_id=["a", "c", "b\x00"]))
    error = _error(store)
    assert "control character" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "items.parquet"), 2, "item_id")


def test_windows_1252_punctuation_read_as_latin_1_is_repaired(store):
    _rewrite(store / "items.parquet", lambda frame: frame.assign(title=["oak shelf\x99", "steel \x96 drill",
                                                                        "brass lamp"]))
    assert load_parquet_layout(store).items["title"].tolist()[:2] == ["oak shelf™", "steel – drill"]
    _rewrite(store / "items.parquet", lambda frame: frame.assign(title=["oak shelf", "steel\x90drill",
                                                                        "brass lamp"]))
    assert load_parquet_layout(store).items["title"].tolist()[1] == "steel drill"   # 0x90: no cp1252 character


def test_a_query_of_zero_width_spaces_is_empty(store):
    _rewrite(store / "queries.parquet", lambda frame: frame.assign(text=["shelf", "\u200b\u200b \ufeff"]))
    error = _error(store)
    assert "empty text" in str(error) and (error.row, error.column) == (2, "text")


@pytest.mark.parametrize("scale, message", [
    ({**SCALE, "threshold": 3.5}, "threshold 3.5 must lie in"),
    ({**SCALE, "threshold": float("nan")}, "threshold must be finite"),
    ({**SCALE, "minimum": 4.0}, "minimum 4.0 must be below its maximum 3.0"),
    ({**SCALE, "maximum": "3"}, "maximum must be a number, got str"),
])
def test_a_broken_scale_is_refused_before_the_labels_are_read(store, scale, message):
    (store / "dataset.json").write_text(json.dumps({"name": "tiny", "scale": scale}))
    error = _error(store)
    assert message in str(error) and error.file == str(store)


def test_degenerate_datasets_fail_in_the_data_layer(store):
    _rewrite(store / "judgments.parquet", lambda frame: frame.assign(relevance=[2.0, 1.0, 2.0]))
    error = _error(store)
    assert "no judgment reaches the relevance threshold 2.5" in str(error)
    assert error.file == str(store / "judgments.parquet")
    _rewrite(store / "items.parquet", lambda frame: frame.head(1))
    _rewrite(store / "judgments.parquet", lambda frame: frame.head(1))
    assert "at least 2 items" in str(_error(store))


def test_numeric_title_is_a_wrong_type(store):
    _rewrite(store / "items.parquet", lambda frame: frame.assign(title=[1, 2, 3]))
    error = _error(store)
    assert "wrong type" in str(error) and error.column == "title"


def test_fractional_ids_are_a_wrong_type(store):
    _rewrite(store / "queries.parquet", lambda frame: frame.assign(query_id=[1.0, 2.5]))
    error = _error(store)
    assert "not an integer" in str(error) and (error.row, error.column) == (2, "query_id")


def test_duplicate_id_names_the_second_row(store):
    _rewrite(store / "items.parquet", lambda frame: frame.assign(item_id=["a", "b", "a"]))
    error = _error(store)
    assert "duplicate item id 'a' (first seen at row 1)" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "items.parquet"), 3, "item_id")


def test_duplicate_judgment_is_rejected(store):
    _rewrite(store / "judgments.parquet", lambda frame: frame.assign(item_id=["a", "a", "b"]))
    error = _error(store)
    assert "duplicate judgment" in str(error) and error.row == 2


@pytest.mark.parametrize("blank", ["", "   ", None])
def test_empty_title_names_row_and_column(store, blank):
    _rewrite(store / "items.parquet", lambda frame: frame.assign(title=["oak shelf", blank, "lamp"]))
    error = _error(store)
    assert "empty title" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "items.parquet"), 2, "title")


def test_empty_query_text_is_rejected(store):
    _rewrite(store / "queries.parquet", lambda frame: frame.assign(text=["shelf", " "]))
    assert (_error(store).row, _error(store).column) == (2, "text")


def test_label_outside_scale_names_row(store):
    _rewrite(store / "judgments.parquet", lambda frame: frame.assign(relevance=[3.0, 4.0, 2.0]))
    error = _error(store)
    assert "label 4.0 outside the scale [1.0, 3.0]" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "judgments.parquet"), 2, "relevance")


def test_judgment_pointing_at_unknown_item_names_row(store):
    _rewrite(store / "judgments.parquet", lambda frame: frame.assign(item_id=["a", "c", "zz"]))
    error = _error(store)
    assert "unknown item 'zz'" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "judgments.parquet"), 3, "item_id")


def test_judgment_pointing_at_unknown_query_names_row(store):
    _rewrite(store / "judgments.parquet", lambda frame: frame.assign(query_id=[1, 7, 2]))
    error = _error(store)
    assert "unknown query '7'" in str(error) and (error.row, error.column) == (2, "query_id")


def test_replacement_characters_are_undecodable_text(store):
    _rewrite(store / "items.parquet", lambda frame: frame.assign(title=["oak", "drill", "br\ufffdss lamp"]))
    error = _error(store)
    assert "undecodable text" in str(error) and (error.row, error.column) == (3, "title")


def test_invalid_utf8_in_parquet_is_undecodable_text(store):
    values = [b"shelf", b"cordless dr\xffll"]
    data = b"".join(values)
    offsets = pa.array([0, len(values[0]), len(data)], type=pa.int32())
    text = pa.StringArray.from_buffers(2, offsets.buffers()[1], pa.py_buffer(data))
    pq.write_table(pa.table({"query_id": pa.array([1, 2]), "text": text}), store / "queries.parquet")
    error = _error(store)
    assert "not valid UTF-8" in str(error)
    assert (error.file, error.row, error.column) == (str(store / "queries.parquet"), 2, "text")


def test_empty_file_is_rejected(store):
    (store / "queries.parquet").write_bytes(b"")
    error = _error(store)
    assert "empty file" in str(error) and error.file == str(store / "queries.parquet")


def test_table_without_rows_is_rejected(store):
    _rewrite(store / "judgments.parquet", lambda frame: frame.iloc[:0])
    assert "no rows" in str(_error(store))


def test_unreadable_parquet_is_rejected(store):
    (store / "items.parquet").write_bytes(b"not a parquet file at all")
    assert "unreadable parquet" in str(_error(store))


def test_wrong_encoding_in_csv_names_line(tmp_path):
    folder = shutil.copytree(FIXTURES / "wands", tmp_path / "wands")
    product = folder / "product.csv"
    # line 4 = the third product; a Latin-1 byte in a UTF-8 file
    product.write_bytes(product.read_bytes().replace(b"vanity set", b"vanit\xe9 set"))
    with pytest.raises(DataError) as error:
        load_wands(folder)
    assert "undecodable text: byte 0xe9 at line 4 is not utf-8" in str(error.value)
    assert (error.value.file, error.value.row) == (str(product), 3)


def test_csv_rows_count_records_not_lines(tmp_path):
    from sid_models.data.validate import read_table

    file = tmp_path / "items.csv"
    file.write_text('id,title\n1,"two\nlines"\n2,fine\n3,"x",extra\n')
    with pytest.raises(DataError) as error:
        read_table(file, ("id", "title"))
    assert "3 fields where the header has 2" in str(error.value) and error.value.row == 3
    file.write_text('id,title\n1,"two\nlines"\n2,"never closed\n3,x\n')
    with pytest.raises(DataError) as error:
        read_table(file, ("id", "title"))
    assert "never closes" in str(error.value) and error.value.row == 2
    file.write_bytes('id,title\n1,"two\nlines"\n2,caf\xe9\n'.encode("latin-1"))
    with pytest.raises(DataError) as error:
        read_table(file, ("id", "title"))
    assert error.value.row == 2


def test_home_depot_csv_in_utf8_is_not_read_as_latin1(tmp_path):
    rows = ('"id","product_uid","product_title","search_term","relevance"\n'
            '2,100001,"Café Shelf™ 12 in.","shelf",3\n3,100002,"Brass Lamp","lamp",2.5\n')
    for encoding in ("utf-8", "cp1252"):
        file = tmp_path / f"train-{encoding}.csv"
        file.write_bytes(rows.encode(encoding))
        assert load_home_depot(file).items["title"].tolist()[0] == "Café Shelf™ 12 in."


def test_empty_csv_is_rejected(tmp_path):
    folder = shutil.copytree(FIXTURES / "wands", tmp_path / "wands")
    (folder / "query.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_wands(folder)
    (folder / "query.csv").write_text("query_id\tquery\tquery_class\n")
    with pytest.raises(DataError, match="no rows"):
        load_wands(folder)


def test_home_depot_csv_errors_point_at_csv_rows(tmp_path):
    rows = ('"id","product_uid","product_title","search_term","relevance"\n'
            '2,100001,"Simpson Strong-Tie 12-Gauge Angle","angle bracket",3\n'
            '3,100001,"Simpson Strong-Tie 12-Gauge Angle","l bracket",3.5\n')
    file = tmp_path / "train.csv.gz"
    file.write_bytes(gzip.compress(rows.encode("ISO-8859-1")))
    with pytest.raises(DataError) as error:
        load_home_depot(file)
    assert (error.value.file, error.value.row, error.value.column) == (str(file), 2, "relevance")
    file.write_bytes(gzip.compress(rows.replace('"search_term",', "").encode("ISO-8859-1")))
    with pytest.raises(DataError, match="missing column") as error:
        load_home_depot(file)
    assert error.value.column == "search_term"
