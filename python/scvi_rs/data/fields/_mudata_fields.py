"""The MuData versions of the AnnData fields (``MuDataWrapper`` applied to each)."""

from __future__ import annotations

from ._arraylike_field import (
    CategoricalJointObsField,
    CategoricalJointVarField,
    NumericalJointObsField,
    NumericalJointVarField,
    ObsmField,
    VarmField,
)
from ._dataframe_field import (
    CategoricalObsField,
    CategoricalVarField,
    LabelsWithUnlabeledObsField,
    NumericalObsField,
    NumericalVarField,
)
from ._layer_field import LayerField
from ._mudata import MuDataWrapper, copy_batch_to_modality
from ._protein import ProteinLayerField

MuDataLayerField = MuDataWrapper(LayerField)
MuDataProteinLayerField = MuDataWrapper(ProteinLayerField, preregister_fn=copy_batch_to_modality)
MuDataNumericalObsField = MuDataWrapper(NumericalObsField)
MuDataNumericalVarField = MuDataWrapper(NumericalVarField)
MuDataCategoricalObsField = MuDataWrapper(CategoricalObsField)
MuDataCategoricalVarField = MuDataWrapper(CategoricalVarField)
MuDataObsmField = MuDataWrapper(ObsmField)
MuDataVarmField = MuDataWrapper(VarmField)
MuDataNumericalJointObsField = MuDataWrapper(NumericalJointObsField)
MuDataNumericalJointVarField = MuDataWrapper(NumericalJointVarField)
MuDataCategoricalJointObsField = MuDataWrapper(CategoricalJointObsField)
MuDataCategoricalJointVarField = MuDataWrapper(CategoricalJointVarField)
MuDataLabelsWithUnlabeledObsField = MuDataWrapper(LabelsWithUnlabeledObsField)
