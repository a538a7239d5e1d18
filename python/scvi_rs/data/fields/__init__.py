"""Data fields: each registers one piece of an AnnData with an ``AnnDataManager``.

The ``MuData*`` fields register the same pieces on one modality of a MuData object
(``MuDataWrapper`` builds them); they need the ``mudata`` package only to be given a MuData.
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
from ._mudata import BaseMuDataWrapperClass, MuDataWrapper
from ._mudata_fields import (
    MuDataCategoricalJointObsField,
    MuDataCategoricalJointVarField,
    MuDataCategoricalObsField,
    MuDataCategoricalVarField,
    MuDataLabelsWithUnlabeledObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataNumericalJointVarField,
    MuDataNumericalObsField,
    MuDataNumericalVarField,
    MuDataObsmField,
    MuDataProteinLayerField,
    MuDataVarmField,
)
from ._uns_field import BaseUnsField, StringUnsField

__all__ = [
    "AnnDataField",
    "ArrayLikeField",
    "BaseAnnDataField",
    "BaseArrayLikeField",
    "BaseDataFrameField",
    "BaseJointField",
    "BaseMuDataWrapperClass",
    "BaseUnsField",
    "CategoricalDataFrameField",
    "CategoricalJointField",
    "CategoricalJointObsField",
    "CategoricalJointVarField",
    "CategoricalObsField",
    "CategoricalVarField",
    "LabelsWithUnlabeledObsField",
    "LayerField",
    "MuDataCategoricalJointObsField",
    "MuDataCategoricalJointVarField",
    "MuDataCategoricalObsField",
    "MuDataCategoricalVarField",
    "MuDataLabelsWithUnlabeledObsField",
    "MuDataLayerField",
    "MuDataNumericalJointObsField",
    "MuDataNumericalJointVarField",
    "MuDataNumericalObsField",
    "MuDataNumericalVarField",
    "MuDataObsmField",
    "MuDataProteinLayerField",
    "MuDataVarmField",
    "MuDataWrapper",
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
