"""Networks: feature-pyramid encoders, the multi-scale quantizer, SSL heads and utilities, the DiSSECT model."""

from .dissect import STAGE_NAMES, DiSSECT, DiSSECTEmbedder, QuantisedDescriptor, load_pretrained_quantizer
from .encoders import RESNET_LAYERS, PretrainedWeightsError, ResNetFeaturePyramid, load_pretrained_encoder
from .heads import FUSIONS, DINOHead, DiscreteDescriptor, MLPHead
from .quantizer import EMACodebook, MultiScaleQuantizer
from .ssl_utils import cosine_momentum, ema_update, global_pool, pooled_codes

__all__ = [
    "FUSIONS",
    "RESNET_LAYERS",
    "STAGE_NAMES",
    "DINOHead",
    "DiSSECT",
    "DiSSECTEmbedder",
    "DiscreteDescriptor",
    "EMACodebook",
    "MLPHead",
    "MultiScaleQuantizer",
    "PretrainedWeightsError",
    "QuantisedDescriptor",
    "ResNetFeaturePyramid",
    "cosine_momentum",
    "ema_update",
    "global_pool",
    "load_pretrained_encoder",
    "load_pretrained_quantizer",
    "pooled_codes",
]
