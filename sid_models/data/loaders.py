"""Loaders from public formats into the canonical contract (see schema.py), selected by params.

`dataset.kind` picks the format and `dataset.path` the file or folder (relative paths are
taken from the repository root):

- `demo`: the built-in demo store (demo.py), sized by the `demo` section; no path.
- `parquet`: the project's own layout, a folder with `items.parquet` (item_id, title, optional
  brand, category, description), `queries.parquet` (query_id, text), `judgments.parquet`
  (query_id, item_id, and `relevance` and/or `clicks`, `purchases` counts: without
  `relevance` a pair's grade is 2 if purchased, 1 if clicked, 0 if only shown) and
  `dataset.json` or `dataset.yaml` declaring
  `{name, scale: {minimum, maximum, threshold, gain_offset}}` (or `dataset.scale` in params).
  The `raw_dataset` stage writes exactly this layout (`save_parquet_layout`).
- `home_depot`: Kaggle "Home Depot Product Search Relevance", either the folder layout
  (products.parquet, queries.parquet, judgments.parquet) or the raw `train.csv[.gz]`
  (ISO-8859-1; a folder holding `raw/train.csv.gz` works too). Grades 1..3, relevant from
  2.5, gain = grade - 1. The CSV has no query ids: a query is a distinct search term,
  numbered in order of first appearance, and a product's title is its most frequent title
  version: both reproduce the folder layout exactly.
- `esci`: Amazon Shopping Queries (ESCI), a folder with
  `shopping_queries_dataset_examples.parquet` and `shopping_queries_dataset_products.parquet`,
  filtered to `dataset.esci.locale` (and to the "small version" task-1 subset when
  `dataset.esci.small_version_only`). The grade of a label is its standard ESCI gain
  (E 1.0, S 0.1, C 0.01, I 0.0), so the NDCG gain is the grade itself (gain_offset 0);
  only Exact counts as relevant (threshold 1.0), as in the ESCI retrieval task.
- `wands`: Wayfair WANDS, a folder with tab-separated `product.csv`, `query.csv`,
  `label.csv`; Exact = 2, Partial = 1, Irrelevant = 0, relevant = Exact, gain = grade.

Every loader validates the contract (validate.py) and raises DataError naming file, row
and column before returning, so a stage never writes from a bad input.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..params import REPO_ROOT
from .demo import generate_demo_store
from .schema import ITEM_COLUMNS, ITEM_OPTIONAL_COLUMNS, QUERY_COLUMNS, DataError, Dataset, RelevanceScale
from .validate import ROW, Source, read_table, to_ids, to_numbers, to_text, validate_tables

HOME_DEPOT_SCALE = RelevanceScale(minimum=1.0, maximum=3.0, threshold=2.5, gain_offset=1.0)
ESCI_GRADES = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
ESCI_SCALE = RelevanceScale(minimum=0.0, maximum=1.0, threshold=1.0, gain_offset=0.0)
WANDS_GRADES = {"Exact": 2.0, "Partial": 1.0, "Irrelevant": 0.0}
WANDS_SCALE = RelevanceScale(minimum=0.0, maximum=2.0, threshold=2.0, gain_offset=0.0)
BEHAVIOUR_COLUMNS = ("clicks", "purchases")
LAYOUT_META_FILES = ("dataset.json", "dataset.yaml", "dataset.yml")
KINDS = ("demo", "parquet", "home_depot", "esci", "wands")


def load_dataset(params: dict) -> Dataset:
    """The dataset params.yaml selects: `dataset.kind` and `dataset.path`."""
    config = params["dataset"]
    kind = config["kind"]
    if kind == "demo":
        return load_demo(params["demo"])
    if kind not in KINDS:
        raise ValueError(f"unknown dataset.kind {kind!r}; expected one of: {', '.join(KINDS)}")
    path = dataset_path(params)
    if kind == "parquet":
        return load_parquet_layout(path, scale=config.get("scale"))
    if kind == "home_depot":
        return load_home_depot(path)
    if kind == "esci":
        return load_esci(path, **config["esci"])
    return load_wands(path)


def dataset_path(params: dict) -> Path:
    """`dataset.path` as an absolute path (relative paths start at the repository root)."""
    raw = params["dataset"].get("path")
    if not raw:
        raise ValueError(f"dataset.kind={params['dataset']['kind']!r} needs dataset.path in params.yaml")
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.exists():
        raise DataError("dataset path not found", file=path)
    return path


def load_demo(demo_params: dict) -> Dataset:
    dataset = generate_demo_store(**demo_params)
    source = Source(Path(dataset.source))
    return _finish(dataset.name, dataset.source, dataset.scale,
                   *(frame.assign(**{ROW: np.arange(1, len(frame) + 1)})
                     for frame in (dataset.items, dataset.queries, dataset.judgments)),
                   sources={"items": source, "queries": source, "judgments": source})


def load_parquet_layout(folder: str | Path, scale: dict | None = None) -> Dataset:
    folder = Path(folder)
    meta = _layout_meta(folder)
    scale_fields = meta.get("scale") or scale
    if not scale_fields:
        raise DataError(f"no relevance scale: write one of {', '.join(LAYOUT_META_FILES)} with a `scale` "
                        "mapping or set dataset.scale in params.yaml", file=folder)
    try:
        relevance_scale = RelevanceScale(**scale_fields)
    except (TypeError, DataError) as error:
        raise DataError(f"bad scale {scale_fields!r}: {error}", file=folder) from error
    files = {name: folder / f"{name}.parquet" for name in ("items", "queries", "judgments")}
    sources = {name: Source(file) for name, file in files.items()}
    raw_items = read_table(files["items"], ITEM_COLUMNS)
    raw_queries = read_table(files["queries"], QUERY_COLUMNS)
    raw_judgments = read_table(files["judgments"], ("query_id", "item_id"))
    items = canonical_items(raw_items, "item_id", "title", {column: column for column in ITEM_OPTIONAL_COLUMNS},
                            sources["items"])
    queries = canonical_queries(raw_queries, "query_id", "text", sources["queries"])
    judgments = _judgments(raw_judgments, sources["judgments"], "query_id", "item_id",
                           _layout_relevance(raw_judgments, sources["judgments"]))
    for column in BEHAVIOUR_COLUMNS:
        if column in raw_judgments.columns:
            judgments[column] = _counts(raw_judgments, column, sources["judgments"])
    # `source` in the description keeps the origin of a dataset the raw_dataset stage wrote
    return _finish(meta.get("name", folder.name), meta.get("source", str(folder)), relevance_scale,
                   items, queries, judgments, sources)


def _layout_relevance(raw: pd.DataFrame, source: Source) -> pd.Series:
    """Graded labels, or for a behaviour log without labels: purchased 2, clicked 1, shown only 0."""
    if "relevance" in raw.columns:
        return to_numbers(raw, "relevance", source)
    present = [column for column in BEHAVIOUR_COLUMNS if column in raw.columns]
    if not present:
        raise DataError(f"missing column: judgments need `relevance` or behaviour counts "
                        f"({', '.join(BEHAVIOUR_COLUMNS)})", file=source.file, column="relevance")
    grade = pd.Series(0.0, index=raw.index)
    if "clicks" in present:
        grade = grade.where(_counts(raw, "clicks", source).eq(0), 1.0)
    if "purchases" in present:
        grade = grade.where(_counts(raw, "purchases", source).eq(0), 2.0)
    return grade


def _counts(raw: pd.DataFrame, column: str, source: Source) -> pd.Series:
    counts = to_numbers(raw, column, source)
    bad = ((counts < 0) | (counts != counts.round())).to_numpy()
    if bad.any():
        position = int(bad.argmax())
        raise source.error(f"wrong type: {column} must be a count, got {counts.iloc[position]!r}", raw, position, column)
    return counts.astype(np.int64)


def save_parquet_layout(dataset: Dataset, folder: str | Path) -> Path:
    """Write `dataset` in the layout `load_parquet_layout` reads."""
    folder = dataset.write_tables(folder)
    meta = {"name": dataset.name, "source": dataset.source, "scale": vars(dataset.scale)}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def _layout_meta(folder: Path) -> dict:
    for name in LAYOUT_META_FILES:
        file = folder / name
        if file.is_file():
            try:
                meta = json.loads(file.read_text()) if file.suffix == ".json" else yaml.safe_load(file.read_text())
            except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
                raise DataError(f"unreadable dataset description: {error}", file=file) from error
            if not isinstance(meta, dict):
                raise DataError("dataset description must be a mapping", file=file)
            return meta
    return {}


def load_home_depot(path: str | Path) -> Dataset:
    path = Path(path)
    if path.is_dir() and (path / "products.parquet").exists():
        return _home_depot_folder(path)
    if path.is_dir():
        candidates = [path / name for name in ("raw/train.csv.gz", "raw/train.csv", "train.csv.gz", "train.csv")]
        found = [candidate for candidate in candidates if candidate.is_file()]
        if not found:
            raise DataError("no products.parquet and no raw/train.csv[.gz]: not a Home Depot dataset", file=path)
        path = found[0]
    return _home_depot_csv(path)


def _home_depot_folder(folder: Path) -> Dataset:
    sources = {"items": Source(folder / "products.parquet", {"item_id": "product_uid", "title": "product_title"}),
               "queries": Source(folder / "queries.parquet", {"text": "query"}),
               "judgments": Source(folder / "judgments.parquet", {"item_id": "product_uid"})}
    raw_items = read_table(sources["items"].file, ("product_uid", "product_title"))
    raw_queries = read_table(sources["queries"].file, ("query_id", "query"))
    raw_judgments = read_table(sources["judgments"].file, ("query_id", "product_uid", "relevance"))
    items = pd.DataFrame({"item_id": to_ids(raw_items, "product_uid", sources["items"]),
                          "title": to_text(raw_items, "product_title", sources["items"], required=True),
                          ROW: raw_items[ROW]})
    queries = pd.DataFrame({"query_id": to_ids(raw_queries, "query_id", sources["queries"]),
                            "text": to_text(raw_queries, "query", sources["queries"], required=True),
                            ROW: raw_queries[ROW]})
    judgments = _judgments(raw_judgments, sources["judgments"], "query_id", "product_uid",
                           to_numbers(raw_judgments, "relevance", sources["judgments"]))
    return _finish("home_depot", str(folder), HOME_DEPOT_SCALE, items, queries, judgments, sources)


def _home_depot_csv(file: Path) -> Dataset:
    columns = {"item_id": "product_uid", "title": "product_title", "text": "search_term"}
    source = Source(file, columns)
    # The Kaggle export is Windows-1252 with a few bytes that code page leaves undefined, so it
    # is read as Latin-1 and `to_text` maps the C1 range back to Windows-1252; a re-saved UTF-8
    # copy is read as UTF-8 (read as Latin-1 it would turn into mojibake).
    raw = read_table(file, ("product_uid", "product_title", "search_term", "relevance"), encoding=("utf-8", "latin-1"))
    item_ids = to_ids(raw, "product_uid", source)
    titles = to_text(raw, "product_title", source, required=True)
    terms = to_text(raw, "search_term", source, required=True)
    relevance = to_numbers(raw, "relevance", source)
    rows = pd.DataFrame({"item_id": item_ids, "title": titles, "text": terms, ROW: raw[ROW]})
    # A few products carry two title versions in the export (15 in the Kaggle file): keep the
    # most frequent one, the earliest on ties, as the competition's product table does.
    versions = rows.groupby(["item_id", "title"], sort=False).agg(count=(ROW, "size"), first=(ROW, "min"))
    versions = versions.reset_index().sort_values(["count", "first"], ascending=[False, True])
    items = versions.drop_duplicates("item_id").sort_values("first")
    items = items.rename(columns={"first": ROW})[["item_id", "title", ROW]]
    # Query ids number the distinct search terms in order of first appearance.
    queries = rows.drop_duplicates("text")[["text", ROW]].reset_index(drop=True)
    queries.insert(0, "query_id", queries.index.astype(str))
    query_ids = rows["text"].map(queries.set_index("text")["query_id"])
    judgments = pd.DataFrame({"query_id": query_ids, "item_id": item_ids, "relevance": relevance, ROW: raw[ROW]})
    sources = {"items": source, "queries": source, "judgments": source}
    return _finish("home_depot", str(file), HOME_DEPOT_SCALE, items, queries, judgments, sources)


def load_esci(folder: str | Path, locale: str, small_version_only: bool) -> Dataset:
    folder = Path(folder)
    examples_file = folder / "shopping_queries_dataset_examples.parquet"
    products_file = folder / "shopping_queries_dataset_products.parquet"
    examples_source = Source(examples_file, {"item_id": "product_id", "relevance": "esci_label", "text": "query"})
    products_source = Source(products_file, {"item_id": "product_id", "title": "product_title",
                                             "brand": "product_brand", "description": "product_description"})
    examples = read_table(examples_file, ("query_id", "query", "product_id", "product_locale", "esci_label"))
    products = read_table(products_file, ("product_id", "product_title", "product_locale"))
    keep = examples["product_locale"].astype(str).eq(locale)
    if small_version_only:
        if "small_version" not in examples.columns:
            raise DataError("missing column (needed for dataset.esci.small_version_only)", file=examples_file,
                            column="small_version")
        keep &= to_numbers(examples, "small_version", examples_source).eq(1)
    examples = examples[keep.to_numpy()].reset_index(drop=True)
    products = products[products["product_locale"].astype(str).eq(locale).to_numpy()].reset_index(drop=True)
    if examples.empty or products.empty:
        raise DataError(f"no rows for locale {locale!r}", file=examples_file if examples.empty else products_file,
                        column="product_locale")
    labels = examples["esci_label"].astype(str)
    unknown = ~labels.isin(list(ESCI_GRADES)).to_numpy()
    if unknown.any():
        position = int(np.argmax(unknown))
        raise examples_source.error(f"label {labels.iloc[position]!r} outside the scale {sorted(ESCI_GRADES)}",
                                    examples, position, "relevance")
    items = pd.DataFrame({"item_id": to_ids(products, "product_id", products_source),
                          "title": to_text(products, "product_title", products_source, required=True)})
    for canonical, column in (("brand", "product_brand"), ("description", "product_description")):
        if column in products.columns:
            items[canonical] = to_text(products, column, products_source, required=False)
    items[ROW] = products[ROW]
    query_rows = pd.DataFrame({"query_id": to_ids(examples, "query_id", examples_source),
                               "text": to_text(examples, "query", examples_source, required=True),
                               ROW: examples[ROW]})
    queries = _distinct_queries(query_rows, examples_source)
    judgments = _judgments(examples, examples_source, "query_id", "product_id", labels.map(ESCI_GRADES))
    sources = {"items": products_source, "queries": examples_source, "judgments": examples_source}
    return _finish(f"esci-{locale}", str(folder), ESCI_SCALE, items, queries, judgments, sources)


def load_wands(folder: str | Path) -> Dataset:
    folder = Path(folder)
    sources = {"items": Source(folder / "product.csv", {"item_id": "product_id", "title": "product_name",
                                                        "category": "product_class",
                                                        "description": "product_description"}),
               "queries": Source(folder / "query.csv", {"text": "query"}),
               "judgments": Source(folder / "label.csv", {"item_id": "product_id", "relevance": "label"})}
    products = read_table(sources["items"].file, ("product_id", "product_name"), sep="\t")
    raw_queries = read_table(sources["queries"].file, ("query_id", "query"), sep="\t")
    labels = read_table(sources["judgments"].file, ("query_id", "product_id", "label"), sep="\t")
    items = canonical_items(products, "product_id", "product_name",
                            {"category": "product_class", "description": "product_description"}, sources["items"])
    queries = canonical_queries(raw_queries, "query_id", "query", sources["queries"])
    grades = labels["label"].map(WANDS_GRADES)
    unknown = grades.isna().to_numpy()
    if unknown.any():
        position = int(np.argmax(unknown))
        raise sources["judgments"].error(f"label {labels['label'].iloc[position]!r} outside the scale "
                                         f"{list(WANDS_GRADES)}", labels, position, "relevance")
    judgments = _judgments(labels, sources["judgments"], "query_id", "product_id", grades.astype(np.float64))
    return _finish("wands", str(folder), WANDS_SCALE, items, queries, judgments, sources)


def canonical_items(raw: pd.DataFrame, id_column: str, title_column: str, optional: dict[str, str],
                    source: Source) -> pd.DataFrame:
    """item_id, title and the optional canonical columns (canonical name -> raw column, where the
    raw table has it) of a raw item table, validated, with its source ROW numbers."""
    items = pd.DataFrame({"item_id": to_ids(raw, id_column, source),
                          "title": to_text(raw, title_column, source, required=True)})
    for canonical, column in optional.items():
        if column in raw.columns:
            items[canonical] = to_text(raw, column, source, required=False)
    items[ROW] = raw[ROW]
    return items


def canonical_queries(raw: pd.DataFrame, id_column: str, text_column: str, source: Source) -> pd.DataFrame:
    """query_id and text of a raw query table, validated, with its source ROW numbers."""
    return pd.DataFrame({"query_id": to_ids(raw, id_column, source),
                         "text": to_text(raw, text_column, source, required=True), ROW: raw[ROW]})


def _judgments(raw: pd.DataFrame, source: Source, query_column: str, item_column: str,
               relevance: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"query_id": to_ids(raw, query_column, source), "item_id": to_ids(raw, item_column, source),
                         "relevance": relevance.to_numpy(np.float64), ROW: raw[ROW].to_numpy()})


def _distinct_queries(rows: pd.DataFrame, source: Source) -> pd.DataFrame:
    """Queries of a table with one row per judgment: one text per query id."""
    distinct = rows.drop_duplicates(["query_id", "text"])
    clash = distinct.duplicated("query_id").to_numpy()
    if clash.any():
        position = int(np.argmax(clash))
        raise source.error(f"query id {distinct['query_id'].iloc[position]!r} has two different texts",
                           distinct, position, "text")
    return distinct.reset_index(drop=True)


def _finish(name: str, origin: str, scale: RelevanceScale, items: pd.DataFrame, queries: pd.DataFrame,
            judgments: pd.DataFrame, sources: dict[str, Source]) -> Dataset:
    validate_tables(items, queries, judgments, sources, scale)
    tables = [frame.drop(columns=ROW).reset_index(drop=True) for frame in (items, queries, judgments)]
    return Dataset(name=name, items=tables[0], queries=tables[1], judgments=tables[2], scale=scale, source=origin)
