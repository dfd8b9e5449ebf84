"""The transformer container: level embeddings, encoder, decoder and the two-stage proposal heads."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import MLP
from .decoder import Decoder
from .deformable_attention import LevelLayout
from .encoder import Encoder


class Transformer(nn.Module):
    def __init__(self, d_model: int, nheads: int, d_ffn: int, num_levels: int, enc_layers: int, dec_layers: int,
                 num_box_layers: int, enc_points: int, dec_points: int, num_keypoints: int, num_group: int,
                 num_classes: int, proposal_size: float):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        self.encoder = Encoder(enc_layers, d_model, d_ffn, num_levels, nheads, enc_points)
        self.decoder = Decoder(dec_layers, num_box_layers, d_model, d_ffn, num_levels, nheads, dec_points,
                               num_keypoints, num_group, num_classes)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_bbox_embed = MLP(d_model, d_model, 4, 3)
        self.enc_out_class_embed = nn.Linear(d_model, num_classes)
        self.proposal_size = proposal_size

    def propose(self, memory: Tensor, padding: Tensor, layout: LevelLayout,
                num_queries: int) -> tuple[Tensor, Tensor, Tensor]:
        """Score every encoder token as a person and keep the `num_queries` best (two-stage selection).

        memory [B,S,C], padding [B,S] -> the kept tokens' content [B,Q,C], their boxes [B,Q,4] as
        logits of (cx, cy, w, h), and their indices [B,Q]. Invalid tokens (padding, or an anchor
        outside the image) have zero content and +inf boxes. Only the kept tokens go through the
        box head: it is row-wise, so their boxes are the same as if every token went through it.
        """
        anchors = token_anchors(padding, layout, self.proposal_size)
        invalid = padding[..., None] | ~((anchors > 0.01) & (anchors < 0.99)).all(-1, keepdim=True)
        anchors = torch.log(anchors / (1 - anchors)).masked_fill(invalid, float("inf"))
        content = self.enc_output_norm(self.enc_output(memory.masked_fill(invalid, 0.0)))
        top = self.enc_out_class_embed(content).max(-1)[0].topk(num_queries, dim=1)[1]
        keep = lambda t: t.gather(1, top[..., None].expand(-1, -1, t.shape[-1]))
        selected = keep(content)
        return selected, self.enc_out_bbox_embed(selected) + keep(anchors), top


def token_anchors(padding: Tensor, layout: LevelLayout, size: float) -> Tensor:
    """A box anchor per token: its centre in the valid area and a side of size * 2**level.

    padding [B,S] -> [B,S,4] float32 (the official code builds these in float32 in every dtype).
    """
    b = padding.shape[0]
    anchors = []
    for lvl, ((h, w), start) in enumerate(zip(layout.hw, layout.level_start_index.tolist())):
        valid = ~padding[:, start:start + h * w].view(b, h, w)
        valid_h, valid_w = valid[:, :, 0].sum(1), valid[:, 0, :].sum(1)
        ys, xs = torch.meshgrid(torch.linspace(0, h - 1, h, dtype=torch.float32, device=padding.device),
                                torch.linspace(0, w - 1, w, dtype=torch.float32, device=padding.device),
                                indexing="ij")
        grid = torch.stack([xs, ys], -1)
        scale = torch.stack([valid_w, valid_h], -1).view(b, 1, 1, 2)
        centre = (grid[None].expand(b, -1, -1, -1) + 0.5) / scale
        side = torch.ones_like(centre) * size * (2.0 ** lvl)
        anchors.append(torch.cat([centre, side], -1).view(b, -1, 4))
    return torch.cat(anchors, 1)
