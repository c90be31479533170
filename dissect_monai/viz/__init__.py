"""Maps of what pretrained encoders represent (attention, anchor similarity, PCA, DiSSECT codes), their panels, and
result plots (ROC curves, label-efficiency curves)."""

from .maps import (
    anchor_similarity,
    code_index_maps,
    code_palette,
    grid_anchor,
    last_layer_attention,
    patch_feature_map,
    pca_rgb,
    typical_patches,
    vit_of,
)
from .plots import label_efficiency_plot, roc_curves_plot

__all__ = [
    "anchor_similarity",
    "code_index_maps",
    "code_palette",
    "grid_anchor",
    "label_efficiency_plot",
    "last_layer_attention",
    "patch_feature_map",
    "pca_rgb",
    "roc_curves_plot",
    "typical_patches",
    "vit_of",
]
