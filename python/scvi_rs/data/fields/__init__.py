"""Data fields: each registers one piece of an AnnData with an ``AnnDataManager``.

MuData wrappers (``MuDataWrapper`` and the ``MuData*`` fields) are not provided: scvi_rs
registers AnnData objects only.
"""

from ._arraylike_field import (
    ArrayLikeField,
    BaseArrayLikeField,
    BaseJointField,
    CategoricalJointField,
    CategoricalJointObsField,
    CategoricalJointVarField,
    NumericalJointField,
    NumericalJointObsField,
    NumericalJointVarField,
    ObsmField,
    ProteinFieldMixin,
    ProteinObsmField,
    VarmField,
)
from ._base_field import AnnDataField, BaseAnnDataField
from ._dataframe_field import (
    BaseDataFrameField,
    CategoricalDataFrameField,
    CategoricalObsField,
    CategoricalVarField,
    LabelsWithUnlabeledObsField,
    NumericalDataFrameField,
    NumericalObsField,
    NumericalVarField,
)
from ._layer_field import LayerField
from ._uns_field import BaseUnsField, StringUnsField

__all__ = [
    "AnnDataField",
    "ArrayLikeField",
    "BaseAnnDataField",
    "BaseArrayLikeField",
    "BaseDataFrameField",
    "BaseJointField",
    "BaseUnsField",
    "CategoricalDataFrameField",
    "CategoricalJointField",
    "CategoricalJointObsField",
    "CategoricalJointVarField",
    "CategoricalObsField",
    "CategoricalVarField",
    "LabelsWithUnlabeledObsField",
    "LayerField",
    "NumericalDataFrameField",
    "NumericalJointField",
    "NumericalJointObsField",
    "NumericalJointVarField",
    "NumericalObsField",
    "NumericalVarField",
    "ObsmField",
    "ProteinFieldMixin",
    "ProteinObsmField",
    "StringUnsField",
    "VarmField",
]
