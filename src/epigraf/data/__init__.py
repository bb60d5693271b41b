"""Datasets: image folders/zips with camera poses and labels, their validation and conversion
(docs/method.md §6, §13)."""

from epigraf.data.dataset import DatasetWarning, ImageDataset, Item
from epigraf.data.validate import DatasetIndex, Report, validate_dataset

__all__ = ["DatasetIndex", "DatasetWarning", "ImageDataset", "Item", "Report", "validate_dataset"]
