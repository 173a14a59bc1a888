"""Public encoders: frozen feature extractors pretrained on public data only, named by SHA-256.

Only a private head on top of an encoder touches a site's images' features; the encoder
itself is a fixed public function, chosen before any site data is seen.
"""

from common.encoders.backbones import ARCHS, BackboneConfig, build_backbone
from common.encoders.frozen import (
    CARD,
    WEIGHTS,
    EncoderCard,
    FrozenEncoder,
    file_sha256,
    load_encoder,
    read_card,
    save_encoder,
)

__all__ = ["ARCHS", "CARD", "WEIGHTS", "BackboneConfig", "EncoderCard", "FrozenEncoder", "build_backbone",
           "file_sha256", "load_encoder", "read_card", "save_encoder"]
