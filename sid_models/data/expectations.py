"""Great Expectations 1.x suites for the canonical tables and the splits.

These are the declarative data checks the pipeline reports (Dagster shows them as blocking
asset checks); the loaders' contract validation (validate.py) already stops malformed
input with a precise location, so on data that got this far the suites normally pass —
they guard the stage outputs and anything that bypasses the loaders.

GX is imported inside the functions (it takes seconds to import) and runs in an ephemeral
context with analytics off. Each suite returns a `SuiteReport`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .schema import SEGMENTS, SPLITS, Dataset, PreparedDataset
from .split import split_key
from .validate import C1_CONTROL, ID_CONTROL, UNDECODABLE

# whitespace and the zero-width format characters a blank query is made of (is_blank's rule)
BLANK = "^[\\s\u00ad\u200b-\u200f\u2060-\u2064\ufeff]*$"
# after loading no C1 control is left (validate.repair_cp1252 maps them to Windows-1252)
UNDECODABLE_TEXT = f"{UNDECODABLE.pattern}|{C1_CONTROL.pattern}"


@dataclass
class ExpectationOutcome:
    expectation: str          # GX expectation type, e.g. expect_column_values_to_be_unique
    column: str | None
    success: bool
    unexpected_count: int
    examples: list[Any]       # a few offending values


@dataclass
class SuiteReport:
    suite: str
    n_rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(outcome.success for outcome in self.outcomes)

    def failures(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.success]

    def summary(self) -> dict:
        """JSON-able summary: counts and the failed expectations with examples."""
        return {"suite": self.suite, "success": self.success, "n_rows": self.n_rows,
                "n_expectations": len(self.outcomes),
                "failed": [{"expectation": outcome.expectation, "column": outcome.column,
                            "unexpected_count": outcome.unexpected_count, "examples": outcome.examples}
                           for outcome in self.failures()]}


def table_suites(dataset: Dataset, max_examples: int) -> list[SuiteReport]:
    """Suites `items`, `queries`, `judgments`: non-null unique ids, non-empty decodable text,
    labels on the dataset's scale, every judgment pointing at a known item and query."""
    gxe = _expectations()
    items, queries, judgments = dataset.items, dataset.queries, dataset.judgments
    scale = dataset.scale
    # Referential integrity as "no unknown id": GX's in-set check serialises the whole value
    # set per metric and takes minutes on 50k items.
    judgments = judgments.assign(unknown_item_id=_unknown(judgments["item_id"], items["item_id"]),
                                 unknown_query_id=_unknown(judgments["query_id"], queries["query_id"]))
    specs = {
        "items": (items, [*_id_and_text("item_id", "title", gxe), gxe.ExpectTableRowCountToBeBetween(min_value=2)]),
        "queries": (queries, [*_id_and_text("query_id", "text", gxe)]),
        "judgments": (judgments, [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="query_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="relevance"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["query_id", "item_id"]),
            gxe.ExpectColumnValuesToBeBetween(column="relevance", min_value=scale.minimum, max_value=scale.maximum),
            gxe.ExpectColumnMaxToBeBetween(column="relevance", min_value=scale.threshold),  # some pair is relevant
            gxe.ExpectColumnValuesToBeNull(column="unknown_item_id"),
            gxe.ExpectColumnValuesToBeNull(column="unknown_query_id"),
        ]),
    }
    context = _context()
    return [_run_suite(context, name, frame, expectations, max_examples)
            for name, (frame, expectations) in specs.items()]


def split_suites(prepared: PreparedDataset, max_examples: int) -> list[SuiteReport]:
    """Suites `splits` (every query in exactly one split, judgments in their query's split, no query
    text in two splits, `relevant` = grade at or above the threshold) and `segments`."""
    gxe = _expectations()
    queries, judgments = prepared.queries, prepared.judgments
    query_split = queries.set_index("query_id")["split"]
    split_check = pd.DataFrame({
        "query_id": judgments["query_id"],
        "split": judgments["split"],
        "split_of_query": judgments["query_id"].map(query_split),
        "relevant": judgments["relevant"],
        "relevant_by_grade": judgments["relevance"] >= prepared.scale.threshold,
    })
    text_splits = pd.DataFrame({"text_key": split_key(queries["text"]), "split": queries["split"]}).drop_duplicates()
    specs = {
        "query_splits": (queries, [
            gxe.ExpectColumnValuesToNotBeNull(column="split"),
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            gxe.ExpectColumnValuesToBeUnique(column="query_id"),
        ]),
        "judgment_splits": (split_check, [
            gxe.ExpectColumnValuesToNotBeNull(column="split"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="split", column_B="split_of_query"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="relevant", column_B="relevant_by_grade"),
        ]),
        "query_text_splits": (text_splits, [gxe.ExpectColumnValuesToBeUnique(column="text_key")]),
        "segments": (prepared.segments.assign(unknown_item_id=_unknown(prepared.segments["item_id"],
                                                                       prepared.items["item_id"])), [
            gxe.ExpectColumnValuesToBeUnique(column="item_id"),
            gxe.ExpectColumnValuesToBeNull(column="unknown_item_id"),
            gxe.ExpectTableRowCountToEqual(value=len(prepared.items)),
            gxe.ExpectColumnValuesToBeInSet(column="segment", value_set=list(SEGMENTS)),
            gxe.ExpectColumnValuesToBeBetween(column="exposure", min_value=0),
        ]),
    }
    context = _context()
    return [_run_suite(context, name, frame, expectations, max_examples)
            for name, (frame, expectations) in specs.items()]


def _unknown(ids: pd.Series, known: pd.Series) -> pd.Series:
    """The id where it is not among `known`, else null."""
    return ids.where(~ids.isin(known))


def _id_and_text(id_column: str, text_column: str, gxe) -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column=id_column),
        gxe.ExpectColumnValuesToBeUnique(column=id_column),
        gxe.ExpectColumnValuesToNotBeNull(column=text_column),
        gxe.ExpectColumnValuesToNotMatchRegex(column=id_column, regex=ID_CONTROL.pattern),
        gxe.ExpectColumnValuesToNotMatchRegex(column=text_column, regex=BLANK),
        gxe.ExpectColumnValuesToNotMatchRegex(column=text_column, regex=UNDECODABLE_TEXT),
    ]


def _expectations():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx.expectations


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _run_suite(context, name: str, frame: pd.DataFrame, expectations: list, max_examples: int) -> SuiteReport:
    import great_expectations as gx

    batch = (context.data_sources.add_pandas(f"{name}_source")
             .add_dataframe_asset(name=name)
             .add_batch_definition_whole_dataframe(f"{name}_batch")
             .get_batch(batch_parameters={"dataframe": frame}))
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                  "partial_unexpected_count": max_examples})
    report = SuiteReport(suite=name, n_rows=len(frame))
    for outcome in result.results:
        config = outcome.expectation_config
        details = outcome.result or {}
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {config.type} on suite {name!r} could not run: "
                               f"{outcome.exception_info.get('exception_message')}")
        report.outcomes.append(ExpectationOutcome(
            expectation=config.type,
            column=config.kwargs.get("column") or config.kwargs.get("column_A") or
            (",".join(config.kwargs["column_list"]) if "column_list" in config.kwargs else None),
            success=bool(outcome.success),
            unexpected_count=int(details.get("unexpected_count") or 0),
            examples=[_plain(value) for value in (details.get("partial_unexpected_list") or [])[:max_examples]],
        ))
    return report


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
