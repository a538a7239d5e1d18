"""``ProteinLayerField``: protein counts in ``X`` or a layer, with a per-batch mask."""

from __future__ import annotations

from ._arraylike_field import ProteinFieldMixin
from ._layer_field import LayerField


class ProteinLayerField(ProteinFieldMixin, LayerField):
    """Protein counts in ``adata.X`` or ``adata.layers[layer]`` with a per-batch mask.

    The mask (``state_registry["protein_batch_mask"]``) marks, for each batch, the proteins
    measured in it (non-zero in some cell). ``batch_field`` is the batch field *instance*,
    needed when ``use_batch_mask=True``; the remaining arguments are those of
    :class:`LayerField`.
    """
