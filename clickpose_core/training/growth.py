"""Deepen a trained network's pose decoder without throwing away what it has learned.

The official decoder has 2 box layers and 4 pose (human-feedback) layers; the small demo preset
has 2 and 2, and on the demo weights the second pose layer still adds a third to the first one's
keypoint AP (docs/training.md). Training a deeper decoder from random weights would cost a whole
run. Appending layers that start as an identity step keeps the trained network's predictions, so
training can put the new depth to use from where the old network stands.
"""
from __future__ import annotations

import torch

from ..model.clickpose import ClickPose, build_model


def deepen_pose_decoder(model: ClickPose, extra_layers: int) -> ClickPose:
    """A new network with `extra_layers` more pose layers after `model`'s last one.

    Every existing parameter is copied. Each new layer starts from the last pose layer's weights,
    with the outputs of its three residual branches (self-attention, deformable cross-attention,
    feed-forward) and of its box and keypoint offset heads zeroed, its layer norms set to identity,
    and the last layer's class head. Such a layer passes its input tokens on standardised (shifted
    and scaled per token), which the decoder's shared final norm undoes, so:

    * person scores are the old network's;
    * boxes and keypoints are the references the old last layer passed on. A pose layer predicts
      from its normed tokens but passes on references made from its raw tokens (as the official
      model does), so these differ a little from the old last layer's own predictions.

    The keypoint-size head is one MLP shared by every pose layer, so it cannot start at zero in
    the new layers: they still resize the keypoints' sampling windows, which only a later layer's
    cross-attention reads, never a prediction.

    Copying the weights rather than drawing them at random gives the new layers the old layer's
    sampling offsets and attention: once a zeroed output moves, what flows through it is already
    meaningful. The new layers also become feedback layers: `refine` runs every pose layer.
    """
    if extra_layers < 1:
        raise ValueError(f"extra_layers must be at least 1, got {extra_layers}")
    old_cfg = model.config
    new = build_model(old_cfg.replace(dec_layers=old_cfg.dec_layers + extra_layers))
    like = next(model.parameters())
    new.to(device=like.device, dtype=like.dtype)
    # Keys of layers that exist in both are the same; the new layers' keys are missing and set
    # below. The keypoint placement MLP is the last `pose_embed` entry in both, so its index moves.
    unexpected = new.load_state_dict(model.state_dict(), strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"the deeper network has no place for {unexpected[:3]}: the two layouts disagree")
    src, dst = model.transformer.decoder, new.transformer.decoder
    last, last_pose = old_cfg.dec_layers - 1, old_cfg.num_pose_layers - 1
    with torch.no_grad():
        dst.pose_embed[-1].load_state_dict(src.pose_embed[-1].state_dict())
        for lid in range(old_cfg.dec_layers, new.config.dec_layers):
            j = lid - old_cfg.num_box_decoder_layers
            layer = dst.layers[lid]
            layer.load_state_dict(src.layers[last].state_dict())
            for out in (layer.self_attn.out_proj, layer.cross_attn.output_proj, layer.linear2):
                out.weight.zero_()
                out.bias.zero_()
            for norm in (layer.norm1, layer.norm2, layer.norm3):
                norm.weight.fill_(1.0)
                norm.bias.zero_()
            dst.class_embed[lid].load_state_dict(src.class_embed[last].state_dict())
            heads = ((dst.bbox_embed[lid], src.bbox_embed[last]), (dst.pose_embed[j], src.pose_embed[last_pose]))
            for head, origin in heads:
                head.load_state_dict(origin.state_dict())
                head.layers[-1].weight.zero_()
                head.layers[-1].bias.zero_()
    return new.train(model.training)
