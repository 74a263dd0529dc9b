"""Routing data, training and offline evaluation of learned policies (never imported by serving)."""

from training.dataset import LoadReport, RoutingDataset
from training.loaders import FORMATS, load_dataset

__all__ = ["FORMATS", "LoadReport", "RoutingDataset", "load_dataset"]
