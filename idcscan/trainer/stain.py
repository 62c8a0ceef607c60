"""The training data's stain reference: computed from patches, written into an ONNX model.

`idcscan export` and `idcscan compare` add it to every model they ship; `idcscan models
stain-reference MODEL --data DATASET` adds it to a model exported before it existed, without
retraining. Torch-free: the command runs on a scoring install.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from idcscan.core.stain import METADATA_KEY, StainReference, reference_from_patients, tile_features
from idcscan.trainer.data import PatchSet, find_patients, load_patches


def reference_of(patches: PatchSet) -> StainReference:
    """The stain reference of a patch set, patient by patient."""
    features = tile_features(patches.tiles)
    return reference_from_patients(
        {p: features[patches.patients == p] for p in patches.patient_ids}
    )


def reference_of_folder(root: Path, patients: Sequence[str] | None = None) -> StainReference:
    """The stain reference of `patients` (default: all) of a folder in the dataset's layout,
    read one patient at a time (the whole dataset would not fit in memory as one array)."""
    ids = list(patients) if patients is not None else find_patients(Path(root))
    features: dict[str, np.ndarray] = {
        p: tile_features(load_patches(Path(root), [p]).tiles) for p in ids
    }
    return reference_from_patients(features)


def write_reference(model: Path, reference: StainReference) -> None:
    """Put `reference` into an ONNX file's metadata, replacing any earlier one; the graph and
    every other entry are kept as they are."""
    import onnx

    proto = onnx.load(str(model))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=reference.to_json())
    onnx.checker.check_model(proto)
    onnx.save(proto, str(model))
