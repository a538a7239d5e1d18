"""Neural-network building blocks (``scvi.nn``)."""

from torch.nn.functional import one_hot

from ._base_components import DecoderSCVI, Encoder, FCLayers
from ._embedding import Embedding

__all__ = ["DecoderSCVI", "Embedding", "Encoder", "FCLayers", "one_hot"]
