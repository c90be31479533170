"""Networks: feature-pyramid encoders, the multi-scale quantizer, SSL heads and the DiSSECT model."""

from .dissect import FUSIONS, STAGE_NAMES, DiscreteDescriptor, DiSSECT, DiSSECTEmbedder, cosine_momentum
from .encoders import RESNET_LAYERS, PretrainedWeightsError, ResNetFeaturePyramid, load_pretrained_encoder
from .heads import MLPHead
from .quantizer import EMACodebook, MultiScaleQuantizer

__all__ = [
    "FUSIONS",
    "RESNET_LAYERS",
    "STAGE_NAMES",
    "DiSSECT",
    "DiSSECTEmbedder",
    "DiscreteDescriptor",
    "EMACodebook",
    "MLPHead",
    "MultiScaleQuantizer",
    "PretrainedWeightsError",
    "ResNetFeaturePyramid",
    "cosine_momentum",
    "load_pretrained_encoder",
]
