"""An MLServer custom runtime serving the reference model (model/ at the repository's root)
through its parity adapter, so the server computes exactly what `parity check` replays in
the training venv: uint8 `lr` in, `sr` (uint8) and `sr_float` (float32) out."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

# examples/mlserver/models/espcn/runtime.py -> the repository's root, where model/ lives
ROOT = Path(os.environ.get("ESPCN_ROOT") or Path(__file__).resolve().parents[4])
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class EspcnRuntime(MLModel):
    """The reference model, loaded once; one request is one batch."""

    async def load(self) -> bool:
        import torch

        from model import adapter

        torch.set_num_threads(1)  # as parity's workers run it (run.threads = 1)
        adapter.load_network()
        self._adapter = adapter
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outputs = self._adapter.predict(inputs)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name=k, payload=v) for k, v in outputs.items()],
        )
