"""The canonical data contract: items, queries, judgments, and the dataset's relevance scale.

Every loader returns a `Dataset`; every later stage reads a `PreparedDataset` (a `Dataset`
plus the query split and item segments), stored as parquet files in one folder.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ITEM_COLUMNS = ("item_id", "title")
ITEM_OPTIONAL_COLUMNS = ("brand", "category", "description")
QUERY_COLUMNS = ("query_id", "text")
SPLITS = ("train", "valid", "test")
SEGMENTS = ("head", "torso", "tail", "cold")


def is_blank(text: str) -> bool:
    """True when `text` has no visible character: only whitespace and format characters such as
    U+200B ZERO WIDTH SPACE or U+FEFF, which `str.strip` keeps."""
    return all(char.isspace() or unicodedata.category(char) == "Cf" for char in text)


class DataError(ValueError):
    """Input that breaks the data contract. The message names file, row and column.

    `row` is the 1-based record number in the file, the header not counted (a CSV record
    may span lines when a quoted field holds a newline); `column` is the column as the file
    names it.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, row: int | None = None,
                 column: str | None = None):
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        self.file, self.row, self.column = (str(file) if file is not None else None), row, column
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


@dataclass(frozen=True)
class RelevanceScale:
    """A dataset's grading scale.

    `threshold`: grade at or above which an item counts as relevant.
    `gain(r) = max(r - gain_offset, 0)`: the NDCG gain of grade r (Home Depot: r - 1).
    """

    minimum: float
    maximum: float
    threshold: float
    gain_offset: float

    def __post_init__(self):
        for name in ("minimum", "maximum", "threshold", "gain_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise DataError(f"relevance scale {name} must be a number, got {type(value).__name__} {value!r}")
            if not np.isfinite(value):
                raise DataError(f"relevance scale {name} must be finite, got {value!r}")
        if self.minimum >= self.maximum:
            raise DataError(f"relevance scale minimum {self.minimum!r} must be below its maximum {self.maximum!r}")
        if not self.minimum < self.threshold <= self.maximum:
            raise DataError(f"relevance scale threshold {self.threshold!r} must lie in ({self.minimum!r}, "
                            f"{self.maximum!r}]: otherwise no grade, or every grade, counts as relevant")

    def gain(self, relevance: np.ndarray | pd.Series | float):
        return np.maximum(np.asarray(relevance, dtype=np.float64) - self.gain_offset, 0.0)


@dataclass
class Dataset:
    """Canonical tables plus the grading scale. `source` names the file(s) it came from."""

    name: str
    items: pd.DataFrame
    queries: pd.DataFrame
    judgments: pd.DataFrame
    scale: RelevanceScale
    source: str = ""

    def item_text(self) -> pd.Series:
        """Text the encoders see for each item: title, then brand and category when present."""
        text = self.items["title"].astype(str)
        for column in ("brand", "category"):
            if column in self.items.columns:
                extra = self.items[column].fillna("").astype(str)
                text = text.where(extra.eq(""), text + " | " + extra)
        return pd.Series(text.to_numpy(), index=self.items["item_id"].to_numpy(), name="text")


    def write_tables(self, folder: str | Path) -> Path:
        """Write items, queries and judgments as parquet files into `folder` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.items.to_parquet(folder / "items.parquet", index=False)
        self.queries.to_parquet(folder / "queries.parquet", index=False)
        self.judgments.to_parquet(folder / "judgments.parquet", index=False)
        return folder


@dataclass
class PreparedDataset(Dataset):
    """A validated dataset with its split and popularity segments.

    `queries` gains a `split` column (train/valid/test); `judgments` gains `split` and
    `relevant` (relevance >= threshold); `segments` has item_id, exposure, segment.
    """

    segments: pd.DataFrame = field(default_factory=pd.DataFrame)

    def split_judgments(self, split: str) -> pd.DataFrame:
        return self.judgments[self.judgments["split"] == split]

    def relevant(self, split: str) -> pd.DataFrame:
        judged = self.split_judgments(split)
        return judged[judged["relevant"]]

    def split_queries(self, split: str) -> pd.DataFrame:
        return self.queries[self.queries["split"] == split]

    def save(self, folder: str | Path) -> Path:
        folder = self.write_tables(folder)
        self.segments.to_parquet(folder / "segments.parquet", index=False)
        meta = {"name": self.name, "source": self.source, "scale": asdict(self.scale)}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "PreparedDataset":
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            name=meta["name"],
            source=meta["source"],
            scale=RelevanceScale(**meta["scale"]),
            items=pd.read_parquet(folder / "items.parquet"),
            queries=pd.read_parquet(folder / "queries.parquet"),
            judgments=pd.read_parquet(folder / "judgments.parquet"),
            segments=pd.read_parquet(folder / "segments.parquet"),
        )
