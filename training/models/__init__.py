"""EMO + EMOdiffhead model: config, codecs, ReferenceNet, condition and temporal layers."""

from training.models.codec import PixelCodec, VaeCodec
from training.models.config import ModelConfig
from training.models.emo import (
    DROPPABLE, STAGES, Conditions, EmoModel, build_codec, build_model)
from training.models.sd15 import sd15_folder

__all__ = ["DROPPABLE", "STAGES", "Conditions", "EmoModel", "ModelConfig", "PixelCodec",
           "VaeCodec", "build_codec", "build_model", "sd15_folder"]
