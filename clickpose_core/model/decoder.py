"""Click-Pose decoder: box layers over all proposals, then pose layers over person groups.

Tokens are batch-first. After the box layers the sequence is G groups of S = K + 1 tokens,
`[box, keypoint_1 .. keypoint_K]`; references are sigmoid-space (x, y, w, h) for every token, with
a keypoint's (w, h) derived from its person box. The pose layers are also the human-feedback
layers: `run_pose_layers` serves the first pass, the interactive refinement and training alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .common import MLP, AttentionMask, GroupedAttention, inverse_sigmoid, sine_embed
from .deformable_attention import LevelLayout, MSDeformAttn


@dataclass
class DecoderState:
    """Queries entering a decoder layer. tokens [B,Q,C]; refs [B,Q,4] sigmoid-space; attn_mask
    [Q,Q] or [B*heads,Q,Q] bool (True = blocked), GroupedAttention, or None.

    refs may carry gradients: the layer itself sees them detached, but the prediction heads use
    them as they are, so each layer's box update is also trained through the next layer's loss
    (as in the official model)."""
    tokens: Tensor
    refs: Tensor
    attn_mask: AttentionMask


@dataclass
class LayerOutput:
    """What one layer produced: normalised hidden states [B,Q,C], the references it was given
    [B,Q,4] and the references it passes on [B,Q,4]."""
    hidden: Tensor
    refs_in: Tensor
    refs_out: Tensor


@dataclass
class DenoisingQueries:
    """Training-only prefix of noised ground-truth queries (DN-DETR style).

    box_tokens [B,N,C], box_refs [B,N,4] sigmoid-space, kpt_tokens [B,N,K,C], kpt_xy [B,N,K,2],
    box_mask: self-attention mask over N + num_queries tokens, pose_mask: over (N + G) * (K + 1).
    """
    box_tokens: Tensor
    box_refs: Tensor
    kpt_tokens: Tensor
    kpt_xy: Tensor
    box_mask: Tensor
    pose_mask: Tensor

    @property
    def num(self) -> int:
        return self.box_tokens.shape[1]


class DecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention to the encoder memory, feed-forward (post-norm)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = nn.ReLU(inplace=True)   # a module, so that inference kernels can fuse it into linear1
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, query_pos: Tensor, refs: Tensor, values: Tensor, layout: LevelLayout,
                attn_mask: AttentionMask) -> Tensor:
        """tgt, query_pos [B,Q,C]; refs [B,Q,L,4]; values [B,M,S,C/M] -> [B,Q,C]."""
        tgt = self.norm2(tgt + self._self_attention(tgt + query_pos, tgt, attn_mask))
        tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, refs, values, layout))
        return self.norm3(tgt + self.linear2(self.activation(self.linear1(tgt))))

    def _self_attention(self, q: Tensor, v: Tensor, attn_mask: AttentionMask) -> Tensor:
        """q, v [B,Q,C] -> [B,Q,C]."""
        if isinstance(attn_mask, GroupedAttention):
            b, t, c = v.shape
            q, v = q.reshape(-1, attn_mask.size, c), v.reshape(-1, attn_mask.size, c)
            return self.self_attn(q, q, v, need_weights=False)[0].reshape(b, t, c)
        return self.self_attn(q, q, v, attn_mask=attn_mask, need_weights=False)[0]


class Decoder(nn.Module):
    def __init__(self, num_layers: int, num_box_layers: int, d_model: int, d_ffn: int, n_levels: int,
                 n_heads: int, n_points: int, num_keypoints: int, num_group: int, num_classes: int):
        super().__init__()
        self.num_box_layers = num_box_layers
        self.num_keypoints = num_keypoints
        self.num_group = num_group
        num_pose = num_layers - num_box_layers
        # Registration order fixes the state_dict order of the official model.
        self.layers = nn.ModuleList(DecoderLayer(d_model, d_ffn, n_levels, n_heads, n_points)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.hw = nn.Embedding(num_keypoints, 2)                       # keypoint box size, relative to the person
        self.keypoint_embed = nn.Embedding(num_group * num_keypoints, d_model)
        self.bbox_embed = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(num_layers))
        # One more than the pose layers: the last one places the initial keypoints around each box.
        self.pose_embed = nn.ModuleList(MLP(d_model, d_model, 2, 3) for _ in range(num_pose + 1))
        shared_hw = MLP(d_model, d_model, 2, 3)                       # one MLP for every pose layer
        self.pose_hw_embed = nn.ModuleList(shared_hw for _ in range(num_pose))
        self.class_embed = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_layers))

    @property
    def group_size(self) -> int:
        return self.num_keypoints + 1

    def run_layer(self, lid: int, state: DecoderState, values: Tensor, layout: LevelLayout,
                  valid_ratios: Tensor) -> Tensor:
        """Raw (un-normed) output tokens of decoder layer `lid`."""
        refs = state.refs.detach()[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]   # [B,Q,L,4]
        query_pos = self.ref_point_head(sine_embed(refs[:, :, 0], self.norm.normalized_shape[0] // 2))
        return self.layers[lid](state.tokens, query_pos, refs, values, layout, state.attn_mask)

    # ---- box layers -------------------------------------------------------------------------
    def run_box_layers(self, state: DecoderState, values: list[Tensor], layout: LevelLayout,
                       valid_ratios: Tensor) -> tuple[list[LayerOutput], Tensor]:
        """Layers 0 .. num_box_layers-1 over all proposals. Returns the layer outputs and the last
        layer's raw tokens (group selection scores them with the un-normed state)."""
        outputs = []
        for lid in range(self.num_box_layers):
            tokens = self.run_layer(lid, state, values[lid], layout, valid_ratios)
            refs = (self.bbox_embed[lid](tokens) + inverse_sigmoid(state.refs.detach())).sigmoid()
            outputs.append(LayerOutput(self.norm(tokens), state.refs, refs))
            state = DecoderState(tokens, refs, state.attn_mask)
        return outputs, state.tokens

    def select_groups(self, tokens: Tensor, refs: Tensor, num_dn: int) -> tuple[Tensor, Tensor, Tensor]:
        """Keep the num_group best proposals (after any denoising prefix) and give each K keypoint
        tokens placed around its box. tokens [B,Q,C], refs [B,Q,4] ->
        (group tokens [B,G,S,C], group refs [B,G,S,4], kept indices [B,G])."""
        tokens, refs = tokens[:, num_dn:], refs[:, num_dn:]
        scores = self.class_embed[self.num_box_layers - 1](tokens).max(-1)[0]
        keep = scores.topk(self.num_group, dim=1)[1]
        box_refs = refs.gather(1, keep[..., None].expand(-1, -1, 4))
        box_tokens = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        b, k = tokens.shape[0], self.num_keypoints
        kpt_tokens = self.keypoint_embed.weight.view(1, self.num_group, k, -1).expand(b, -1, -1, -1)
        kpt_xy = (inverse_sigmoid(box_refs[:, :, None, :2]) + self.pose_embed[-1](kpt_tokens)).sigmoid()
        return (torch.cat([box_tokens[:, :, None], kpt_tokens], 2),
                torch.cat([box_refs[:, :, None], self.keypoint_refs(kpt_xy, box_refs)], 2), keep)

    def keypoint_refs(self, kpt_xy: Tensor, box_refs: Tensor) -> Tensor:
        """kpt_xy [B,G,K,2], box_refs [B,G,4] -> keypoint references [B,G,K,4] sized from the box."""
        wh = self.hw.weight.sigmoid() * box_refs[:, :, None, 2:]
        return torch.cat([kpt_xy, wh], -1)

    # ---- pose / human-feedback layers -------------------------------------------------------
    def run_pose_layers(self, state: DecoderState, values: list[Tensor], layout: LevelLayout,
                        valid_ratios: Tensor, delta_mask: Tensor | None) -> list[LayerOutput]:
        """Layers num_box_layers .. end over groups. state.tokens [B,G*S,C].

        delta_mask [B,G,K] scales each keypoint's update (0 holds a keypoint where it is);
        None lets every keypoint move.
        """
        outputs = []
        for j in range(len(self.pose_embed) - 1):
            lid = self.num_box_layers + j
            tokens = self.run_layer(lid, state, values[j], layout, valid_ratios)
            refs = self._update_pose_refs(lid, tokens, state.refs.detach(), delta_mask)
            outputs.append(LayerOutput(self.norm(tokens), state.refs, refs))
            state = DecoderState(tokens, refs, state.attn_mask)
        return outputs

    def _update_pose_refs(self, lid: int, tokens: Tensor, refs: Tensor, delta_mask: Tensor | None) -> Tensor:
        j = lid - self.num_box_layers
        b, s = tokens.shape[0], self.group_size
        tok = tokens.view(b, -1, s, tokens.shape[-1])
        logit = inverse_sigmoid(refs).view(b, -1, s, 4)
        box = (self.bbox_embed[lid](tok[:, :, 0]) + logit[:, :, 0]).sigmoid()
        dxy = self.pose_embed[j](tok[:, :, 1:])
        if delta_mask is not None:
            dxy = dxy * delta_mask[..., None]
        kxy = logit[:, :, 1:, :2] + dxy
        khw = logit[:, :, 1:, 2:] + self.pose_hw_embed[j](tok[:, :, 1:])
        kpt = torch.cat([kxy, khw], -1).sigmoid()
        return torch.cat([box[:, :, None], kpt], 2).view(b, -1, 4)

    # ---- prediction heads -------------------------------------------------------------------
    def box_layer_predictions(self, lid: int, out: LayerOutput) -> dict[str, Tensor]:
        """Per-proposal predictions of a box layer: logits [B,Q,classes], boxes [B,Q,4]."""
        boxes = (self.bbox_embed[lid](out.hidden) + inverse_sigmoid(out.refs_in)).sigmoid()
        return {"pred_logits": self.class_embed[lid](out.hidden), "pred_boxes": boxes}

    def pose_layer_predictions(self, lid: int, out: LayerOutput, delta_mask: Tensor | None) -> dict[str, Tensor]:
        """Per-group predictions of a pose layer: logits [B,G,classes], boxes [B,G,4] cxcywh,
        keypoints [B,G,3K] as [x1, y1, ..., xK, yK, v1 .. vK] (v is constant: no visibility head)."""
        b, s = out.hidden.shape[0], self.group_size
        hidden = out.hidden.view(b, -1, s, out.hidden.shape[-1])
        refs = out.refs_in.view(b, -1, s, 4)
        j = lid - self.num_box_layers
        boxes = (self.bbox_embed[lid](hidden[:, :, 0]) + inverse_sigmoid(refs[:, :, 0])).sigmoid()
        dxy = self.pose_embed[j](hidden[:, :, 1:])
        if delta_mask is not None:
            dxy = dxy * delta_mask[..., None]
        xy = (dxy + inverse_sigmoid(refs[:, :, 1:, :2])).sigmoid()
        vis = torch.ones_like(xy[..., 0]).sigmoid()
        return {"pred_logits": self.class_embed[lid](hidden[:, :, 0]), "pred_boxes": boxes,
                "pred_keypoints": torch.cat([xy.flatten(2), vis], -1)}
