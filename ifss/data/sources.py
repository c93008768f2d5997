"""Which files to download to build a dataset: its record's rows, limited to one label source.

The rows themselves (URL, published md5 and where it was published, extraction folder) are data
in the dataset records, `ifss.data.records`. `ifss.data.prepare.fetch_dataset` walks
`files_for(...)`; `SourceFile.needed_for` limits a row to one way of building the labels (COCO:
from the instance annotations or from the COCO-Stuff maps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, MutableMapping

from ifss.data import records
from ifss.data.records import SourceFile, get_dataset
from ifss.errors import IfssError, unknown

__all__ = ["SourceFile", "SOURCES", "downloadable", "files_for"]


def downloadable() -> list[str]:
    """Names of the datasets that have download rows."""
    return [name for name, record in records.DATASETS.items() if record.sources]


def files_for(dataset: str, label_source: str | None = None) -> tuple[SourceFile, ...]:
    """The rows needed to build `dataset` with labels from `label_source` (None: the default)."""
    if dataset not in records.DATASETS:
        raise unknown("dataset", dataset, downloadable(), "to download")
    record = get_dataset(dataset)
    if not record.sources:
        raise IfssError(f"dataset {dataset!r} has nothing to download; {record.how_to_make('DIR')}")
    if record.label_sources:
        label_source = label_source or record.label_sources[0]
        if label_source not in record.label_sources:
            raise unknown("label source", label_source, record.label_sources,
                          f"for dataset {dataset!r}")
    return tuple(f for f in record.sources
                 if f.needed_for is None or label_source in f.needed_for)


class _SourcesView(MutableMapping):
    """The old `{dataset: rows}` table, read from and written through to the records.

    Kept because callers (and tests, with monkeypatch.setitem) read and replace a dataset's rows
    here; setting an entry replaces that dataset's record with one holding the new rows.
    """

    def __getitem__(self, dataset: str) -> tuple[SourceFile, ...]:
        record = records.DATASETS.get(dataset)
        if record is None or not record.sources:
            raise KeyError(dataset)
        return record.sources

    def __setitem__(self, dataset: str, rows) -> None:
        record = get_dataset(dataset)
        records.DATASETS[dataset] = dataclasses.replace(record, sources=tuple(rows))

    def __delitem__(self, dataset: str) -> None:
        self[dataset] = ()

    def __iter__(self) -> Iterator[str]:
        return iter(downloadable())

    def __len__(self) -> int:
        return len(downloadable())


SOURCES: MutableMapping[str, tuple[SourceFile, ...]] = _SourcesView()
