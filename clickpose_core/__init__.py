"""Click-Pose (ICCV 2023, "Neural Interactive Keypoint Detection") as an importable package.

No Label Studio code lives here; `backend/` adapts this package to Label Studio.
"""
from .config import ClickPoseConfig
from .model import ClickPose, EncoderMemory, build_model

__all__ = ["ClickPoseConfig", "ClickPose", "EncoderMemory", "build_model"]
__version__ = "0.1.0"
