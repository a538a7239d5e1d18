"""Neural-network building blocks (``scvi.nn``)."""

from torch.nn.functional import one_hot

from ._base_components import Decoder, DecoderSCVI, Encoder, FCLayers
from ._embedding import Embedding

__all__ = ["Decoder", "DecoderSCVI", "Embedding", "Encoder", "FCLayers", "one_hot"]
