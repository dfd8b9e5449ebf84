from .clickpose import ClickPose, EncoderMemory, build_model
from .decoder import DenoisingQueries

__all__ = ["ClickPose", "EncoderMemory", "DenoisingQueries", "build_model"]
