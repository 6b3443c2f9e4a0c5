"""Datasets for image complexity assessment: loading, manifests, splits and validation."""

from .dataset import ComplexityDataset
from .loaders import (
    SAVOIAS_CATEGORIES,
    list_datasets,
    load_dataset,
    load_folder,
    load_ic9600,
    load_savoias,
    load_viscc,
    read_xlsx_rows,
)
from .manifest import PATH_ALIASES, SCORE_ALIASES, read_manifest, write_manifest
from .splits import (
    Split,
    carve_validation,
    leave_one_category_out,
    official_split,
    random_split,
    repeated_random_splits,
)
from .validate import format_validation_report, validate_dataset

__all__ = [
    "ComplexityDataset",
    "PATH_ALIASES",
    "SAVOIAS_CATEGORIES",
    "SCORE_ALIASES",
    "Split",
    "carve_validation",
    "format_validation_report",
    "leave_one_category_out",
    "list_datasets",
    "load_dataset",
    "load_folder",
    "load_ic9600",
    "load_savoias",
    "load_viscc",
    "official_split",
    "random_split",
    "read_manifest",
    "read_xlsx_rows",
    "repeated_random_splits",
    "validate_dataset",
    "write_manifest",
]
