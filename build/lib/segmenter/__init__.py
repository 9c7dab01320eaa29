from . import mask
from .config import ModelConfig
from .inference import Segmenter

__all__ = ["ModelConfig", "Segmenter", "mask"]
