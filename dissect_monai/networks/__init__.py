"""Networks: feature-pyramid encoders, the multi-scale quantizer, SSL heads and the DiSSECT model."""

from .encoders import RESNET_LAYERS, PretrainedWeightsError, ResNetFeaturePyramid, load_pretrained_encoder

__all__ = ["RESNET_LAYERS", "PretrainedWeightsError", "ResNetFeaturePyramid", "load_pretrained_encoder"]
