"""ClickPose: person detection with keypoints, and the human-feedback refinement of the same decoder.

The model is used in three steps so that interaction never re-runs the image encoder:
`encode` (backbone + encoder, once per image), `decode` (the full decoder: what the detector
predicts) and `refine` (only the pose layers, on the cached encoder output, from boxes and
keypoints that an annotator has corrected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import ClickPoseConfig
from .backbone import Backbone, Bottleneck, downsample_mask
from .common import GroupedAttention, inverse_sigmoid
from .decoder import DecoderState, DenoisingQueries
from .deformable_attention import LevelLayout, MSDeformAttn
from .position import SinePositionEncoding
from .transformer import Transformer


@dataclass
class EncoderMemory:
    """Everything the decoder needs from one batch of images.

    memory [B,S,C] encoder output (None once `for_refinement` dropped it); padding [B,S] bool;
    layout: the level shapes; valid_ratios [B,L,2] (w, h) float32; pose_values: per pose layer,
    that layer's cross-attention values [B,M,S,C/M]. They depend on the image alone, so refinement
    rounds reuse them instead of re-projecting the memory.
    """
    memory: Tensor | None
    padding: Tensor
    layout: LevelLayout
    valid_ratios: Tensor
    pose_values: list[Tensor]

    def select(self, index: int, copy: bool = False) -> "EncoderMemory":
        """The memory of batch row `index` alone (batch size 1). Without `copy` the tensors are
        views that keep the whole batch's storage alive; a cache wants its own copy."""
        pick = slice(index, index + 1)
        take = (lambda t: t[pick].clone()) if copy else (lambda t: t[pick])
        return EncoderMemory(None if self.memory is None else take(self.memory), take(self.padding),
                             self.layout, take(self.valid_ratios), [take(v) for v in self.pose_values])

    def for_refinement(self) -> "EncoderMemory":
        """A copy without the raw memory: enough for `refine`, smaller to cache."""
        return EncoderMemory(None, self.padding, self.layout, self.valid_ratios, self.pose_values)

    def nbytes(self) -> int:
        tensors = [self.padding, self.valid_ratios, *self.pose_values]
        if self.memory is not None:
            tensors.append(self.memory)
        return sum(t.numel() * t.element_size() for t in tensors)


class ClickPose(nn.Module):
    def __init__(self, cfg: ClickPoseConfig):
        super().__init__()
        self.config = cfg
        d = cfg.hidden_dim
        # Registration order reproduces the official state_dict order.
        self.transformer = Transformer(d, cfg.nheads, cfg.dim_feedforward, cfg.num_feature_levels, cfg.enc_layers,
                                       cfg.dec_layers, cfg.num_box_decoder_layers, cfg.enc_n_points,
                                       cfg.dec_n_points, cfg.num_keypoints, cfg.num_group, cfg.num_classes,
                                       cfg.two_stage_default_hw)
        self.label_enc = nn.Embedding(cfg.dn_labelbook_size + 1, d)
        self.label_enc_pose = nn.Embedding(cfg.num_keypoints + 1, d)
        self.input_proj = nn.ModuleList(self._input_projections(cfg))
        self.backbone = Backbone(cfg.backbone_widths, cfg.backbone_blocks,
                                 SinePositionEncoding(d // 2, cfg.pe_temperature))
        decoder = self.transformer.decoder
        # The official model exposes the decoder heads at the top level too (same modules).
        self.bbox_embed = decoder.bbox_embed
        self.class_embed = decoder.class_embed
        self.pose_embed = decoder.pose_embed
        self.pose_hw_embed = decoder.pose_hw_embed
        self.reset_parameters()

    def _input_projections(self, cfg: ClickPoseConfig) -> list[nn.Module]:
        d, levels = cfg.hidden_dim, []
        channels = [w * Bottleneck.expansion for w in cfg.backbone_widths[1:]]
        for c in channels:
            levels.append(nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32, d)))
        in_ch = channels[-1]
        for _ in range(cfg.num_feature_levels - len(channels)):
            levels.append(nn.Sequential(nn.Conv2d(in_ch, d, 3, stride=2, padding=1), nn.GroupNorm(32, d)))
            in_ch = d
        return levels

    def reset_parameters(self) -> None:
        """The official initialisation (used when training from scratch)."""
        t = self.transformer
        for name, p in t.named_parameters():
            if p.dim() > 1 and not name.startswith(("decoder.bbox_embed", "decoder.class_embed",
                                                    "decoder.pose_embed", "decoder.pose_hw_embed")):
                nn.init.xavier_uniform_(p)
        for m in t.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(t.level_embed)
        prior = -math.log((1 - 0.01) / 0.01)
        for cls in [*t.decoder.class_embed, t.enc_out_class_embed]:
            nn.init.constant_(cls.bias, prior)
        for mlp in [*t.decoder.bbox_embed, *t.decoder.pose_embed, t.enc_out_bbox_embed]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)

    # ---- encoder ----------------------------------------------------------------------------
    def encode(self, images: Tensor, masks: Tensor) -> EncoderMemory:
        """images [B,3,H,W] normalised; masks [B,H,W] bool, True on padding."""
        if images.dim() != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"encode expects images [B,3,H,W] and masks [B,H,W]; got {tuple(images.shape)} "
                             f"and {tuple(masks.shape)}")
        feats, fmasks = self.backbone(images, masks.bool())
        srcs = [proj(f) for proj, f in zip(self.input_proj, feats)]
        for proj in self.input_proj[len(feats):]:
            srcs.append(proj(srcs[-1] if len(srcs) > len(feats) else feats[-1]))
            fmasks.append(downsample_mask(masks.bool(), srcs[-1].shape[-2:]))
        pos = [self.backbone[1](m).to(s.dtype) for s, m in zip(srcs, fmasks)]

        layout = LevelLayout(torch.tensor([s.shape[-2:] for s in srcs], device=images.device))
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.transformer.level_embed[i]
                         for i, p in enumerate(pos)], 1)
        padding = torch.cat([m.flatten(1) for m in fmasks], 1)
        valid_ratios = torch.stack([valid_ratio(m) for m in fmasks], 1)
        memory = self.transformer.encoder(src, pos, layout, valid_ratios, padding)
        layers = self.transformer.decoder.layers[self.config.num_box_decoder_layers:]
        values = [layer.cross_attn.project_values(memory, padding, layout) for layer in layers]
        return EncoderMemory(memory, padding, layout, valid_ratios, values)

    # ---- full decoder -----------------------------------------------------------------------
    def decode(self, mem: EncoderMemory, dn: DenoisingQueries | None = None,
               with_aux: bool = False) -> dict[str, Tensor]:
        """Detect persons: {"pred_logits" [B,G,2], "pred_boxes" [B,G,4], "pred_keypoints" [B,G,3K]}.

        with_aux adds "aux_outputs" (every earlier layer), "interm_outputs" (two-stage proposals)
        and, with denoising queries, "dn_outputs" (per layer); used by training.
        """
        if mem.memory is None:
            raise ValueError("this EncoderMemory was reduced by for_refinement(); decode needs the full memory")
        t, dec = self.transformer, self.transformer.decoder
        selected, ref_logits, top = t.propose(mem.memory, mem.padding, mem.layout, self.config.num_queries)
        tokens, refs = selected.detach(), ref_logits.detach().sigmoid()
        num_dn = 0 if dn is None else dn.num
        if dn is not None:
            tokens, refs = torch.cat([dn.box_tokens, tokens], 1), torch.cat([dn.box_refs, refs], 1)

        box_values = [layer.cross_attn.project_values(mem.memory, mem.padding, mem.layout)
                      for layer in dec.layers[:dec.num_box_layers]]
        state = DecoderState(tokens, refs, None if dn is None else dn.box_mask)
        box_outs, last_tokens = dec.run_box_layers(state, box_values, mem.layout, mem.valid_ratios)
        group_tokens, group_refs, keep = dec.select_groups(last_tokens, box_outs[-1].refs_out, num_dn)
        if dn is not None:
            dn_refs = box_outs[-1].refs_out[:, :num_dn]
            group_tokens = torch.cat([torch.cat([last_tokens[:, :num_dn, None], dn.kpt_tokens], 2), group_tokens], 1)
            group_refs = torch.cat([torch.cat([dn_refs[:, :, None], dec.keypoint_refs(dn.kpt_xy, dn_refs)], 2),
                                    group_refs], 1)
        b, g = group_tokens.shape[:2]
        mask = dn.pose_mask if dn is not None else GroupedAttention(dec.group_size)
        state = DecoderState(group_tokens.flatten(1, 2), group_refs.flatten(1, 2), mask)
        pose_outs = dec.run_pose_layers(state, mem.pose_values, mem.layout, mem.valid_ratios, None)

        layers = [dec.box_layer_predictions(i, o) for i, o in enumerate(box_outs)]
        layers += [dec.pose_layer_predictions(dec.num_box_layers + j, o, None) for j, o in enumerate(pose_outs)]
        k3 = 3 * self.config.num_keypoints
        for p in layers[:dec.num_box_layers]:
            p["pred_keypoints"] = p["pred_boxes"].new_zeros(*p["pred_boxes"].shape[:2], k3)
        if dn is not None:
            dn_layers = [{k: v[:, :num_dn] for k, v in p.items()} for p in layers]
            layers = [{k: v[:, num_dn:] for k, v in p.items()} for p in layers]
        out = dict(layers[-1])
        if with_aux:
            out["aux_outputs"] = layers[:-1]
            out["interm_outputs"] = {"pred_logits": t.enc_out_class_embed(selected), "pred_boxes": ref_logits.sigmoid(),
                "pred_keypoints": ref_logits.new_zeros(b, ref_logits.shape[1], k3)}
            out["proposal_index"], out["group_index"] = top, keep
            if dn is not None:
                out["dn_outputs"] = dn_layers
        return out

    # ---- human-feedback refinement ----------------------------------------------------------
    def refine(self, mem: EncoderMemory, boxes: Tensor, keypoints: Tensor, pinned: Tensor | None = None,
               with_aux: bool = False) -> dict[str, Tensor]:
        """One feedback round: run the pose layers on the cached encoder output.

        boxes [B,R,4] cxcywh and keypoints [B,R,K,2] normalised to the unpadded image, with the
        annotator's corrections already in place (see `interaction.apply_clicks`);
        pinned [B,R,K] bool: True holds that keypoint exactly where it is. None reproduces the
        official behaviour, where corrected keypoints move like any other.
        Returns the `decode` dict for the R rows (and "aux_outputs" with with_aux).
        """
        dec, k = self.transformer.decoder, self.config.num_keypoints
        b, r = boxes.shape[:2]
        if boxes.shape != (b, r, 4) or keypoints.shape != (b, r, k, 2):
            raise ValueError(f"refine expects boxes [B,R,4] and keypoints [B,R,{k},2]; got "
                             f"{tuple(boxes.shape)} and {tuple(keypoints.shape)}")
        if pinned is not None and pinned.shape != (b, r, k):
            raise ValueError(f"pinned must be [B,R,K] = {(b, r, k)}, got {tuple(pinned.shape)}")
        box_refs = inverse_sigmoid(boxes).sigmoid()
        refs = torch.cat([box_refs[:, :, None], dec.keypoint_refs(keypoints, box_refs)], 2)
        tokens = torch.cat([self.label_enc.weight[1].expand(b, r, 1, -1),
                            self.label_enc_pose.weight[1:k + 1].expand(b, r, -1, -1)], 2)
        state = DecoderState(tokens.flatten(1, 2), refs.flatten(1, 2),
                             GroupedAttention(dec.group_size))
        delta_mask = None if pinned is None else (~pinned).to(boxes.dtype)
        outs = dec.run_pose_layers(state, mem.pose_values, mem.layout, mem.valid_ratios, delta_mask)
        layers = [dec.pose_layer_predictions(dec.num_box_layers + j, o, delta_mask) for j, o in enumerate(outs)]
        out = dict(layers[-1])
        if with_aux:
            out["aux_outputs"] = layers[:-1]
        return out

    def forward(self, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(images, masks))


def valid_ratio(mask: Tensor) -> Tensor:
    """mask [B,H,W] -> [B,2] (w, h): fraction of the map that is image, not padding (float32)."""
    h, w = mask.shape[1:]
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


def build_model(cfg: ClickPoseConfig | None = None) -> ClickPose:
    """A ClickPose network for `cfg` (the official R50 by default), freshly initialised."""
    return ClickPose(cfg or ClickPoseConfig.r50())
