"""Small models shared by tests (and by scripts that reuse the test fixtures)."""
from __future__ import annotations


def tiny_random_model(seed: int = 0):
    """A tiny random Click-Pose (COCO-17) in eval mode. Offset heads start at zero (as in DINO),
    which would make a random model's refinement move nothing; small noise there makes "other
    joints move" observable."""
    import torch

    from clickpose_core import ClickPoseConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ClickPoseConfig.tiny()).eval()
    with torch.no_grad():
        for param in model.parameters():
            if torch.count_nonzero(param) == 0:
                param.normal_(0.0, 0.05)
    return model
