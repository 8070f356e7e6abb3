"""Feature files, the in-memory dataset and the bundled synthetic data."""

from ambjax.data.assemble import load_dataset, standardized
from ambjax.data.config import DataConfig
from ambjax.data.dataset import (IEMOCAP_LABELS, MELD_LABELS, MODALITIES, DataFormatError,
                                 Dialogue, DialogueDataset, validation_split)
from ambjax.data.loader import LAYOUTS, TEXT_OPTIONS, detect_layout, load_features
from ambjax.data.safe_pickle import read_pickle
from ambjax.data.synthetic import PRESETS, make_synthetic, to_layout_fields, write_pickle

__all__ = [
    "IEMOCAP_LABELS", "MELD_LABELS", "MODALITIES", "DataFormatError", "Dialogue",
    "DialogueDataset", "validation_split", "LAYOUTS", "TEXT_OPTIONS", "detect_layout",
    "load_features", "read_pickle", "PRESETS", "make_synthetic", "to_layout_fields",
    "write_pickle", "DataConfig", "load_dataset", "standardized",
]
