"""A model that answers after 60 seconds, for the tests of a slow MLServer (served beside
the example's espcn in a copy of its model repository; never part of the example)."""

from __future__ import annotations

import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

SECONDS = 60.0


class SlowRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await asyncio.sleep(SECONDS)
        lr = NumpyCodec.decode_input(payload.inputs[0])
        sr = np.repeat(np.repeat(lr, 2, axis=1), 2, axis=2)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(name="sr", payload=sr)]
        )
