"""Maps of what pretrained encoders represent (attention, anchor similarity, PCA, DiSSECT codes) and their panels."""

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

__all__ = [
    "anchor_similarity",
    "code_index_maps",
    "code_palette",
    "grid_anchor",
    "last_layer_attention",
    "patch_feature_map",
    "pca_rgb",
    "typical_patches",
    "vit_of",
]
