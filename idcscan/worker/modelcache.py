"""The worker's ONNX models: one onnxruntime session per model location in this process.

Created on first use, after Celery forks its pool processes, so that no session is shared
between processes; a model stored remotely (s3://) is copied once into the data folder. Of a
model's registered precision variants it loads the one for its execution provider
(`core/variants.py`): INT8 on the CPU, FP16 on CUDA, FP32 when forced or when there is none.
"""

from __future__ import annotations

import hashlib
import logging

from idcscan.core import variants
from idcscan.core.onnxmodel import OnnxModel, providers_for
from idcscan.core.settings import Settings
from idcscan.core.storage import as_local_file

log = logging.getLogger(__name__)


class ModelCache:
    """One OnnxModel per model location in this process, created on first use (after the fork)."""

    def __init__(self, settings: Settings, threads: int) -> None:
        self.settings, self.threads = settings, threads
        self._models: dict[str, OnnxModel] = {}

    def get(self, location: str, registered: dict[str, str] | None = None) -> OnnxModel:
        """The session for the model at `location`, in the precision of this worker's provider
        among `registered` (precision -> location, `Model.variants`)."""
        if location not in self._models:
            self._models[location] = self._load(location, registered or {})
        return self._models[location]

    def _load(self, location: str, registered: dict[str, str]) -> OnnxModel:
        provider = providers_for(self.settings.execution_provider)[0]
        precision = variants.choose(provider, self.settings.model_precision, list(registered))
        model = self._open(registered.get(precision, location))
        # `auto` falls back to the CPU when CUDA does not start: then the CPU's precision.
        actual = variants.choose(model.provider, self.settings.model_precision, list(registered))
        if actual != precision:
            model = self._open(registered.get(actual, location))
        log.info("model %s: %s on %s", model.manifest.version, model.precision, model.provider)
        return model

    def _open(self, location: str) -> OnnxModel:
        return OnnxModel(self._local(location), self.settings.execution_provider, self.threads)

    def _local(self, location: str) -> str:
        """A local path of the file: a remote one is copied into the data folder once."""
        if "://" not in location or location.startswith("file://"):
            return location.removeprefix("file://")
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
        return str(target)
