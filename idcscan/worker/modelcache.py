"""The worker's ONNX models: one onnxruntime session per model location in this process.

Created on first use, after Celery forks its pool processes, so that no session is shared
between processes; a model stored remotely (s3://) is copied once into the data folder.
"""

from __future__ import annotations

import hashlib

from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.settings import Settings
from idcscan.core.storage import as_local_file


class ModelCache:
    """One OnnxModel per model location in this process, created on first use (after the fork)."""

    def __init__(self, settings: Settings, threads: int) -> None:
        self.settings, self.threads = settings, threads
        self._models: dict[str, OnnxModel] = {}

    def get(self, location: str) -> OnnxModel:
        if location not in self._models:
            if "://" in location and not location.startswith("file://"):
                target = (
                    self.settings.data_dir
                    / "model-cache"
                    / (hashlib.sha256(location.encode()).hexdigest()[:32] + ".onnx")
                )
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with as_local_file(location) as local:
                        partial = target.with_suffix(".part")
                        partial.write_bytes(local.read_bytes())
                        partial.replace(target)
                path = str(target)
            else:
                path = location.removeprefix("file://")
            self._models[location] = OnnxModel(path, self.settings.execution_provider, self.threads)
        return self._models[location]
