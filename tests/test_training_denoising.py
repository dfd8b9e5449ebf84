"""Denoising queries: attention masks, noise bounds, exact joints."""
import torch

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.training.denoising import (DenoisingSettings, box_attention_mask, exact_joints,
                                               make_denoising_queries, pose_attention_mask, power_law_count)


def test_box_mask_matching_cannot_see_denoising_and_copies_are_separate():
    # One image with 3 persons, 7 denoising queries -> copies {0,1,2}, {3,4,5}, {6}; 4 matching queries.
    m = box_attention_mask([3], number=7, num_queries=4, num_heads=2)
    assert m.shape == (2, 11, 11) and torch.equal(m[0], m[1])
    m = m[0]
    assert m[7:, :7].all()                       # matching -> denoising blocked
    assert not m[7:, 7:].any()                   # matching queries see each other
    assert not m[:7, 7:].any()                   # denoising -> matching allowed (official)
    copy = [0, 0, 0, 1, 1, 1, 2]
    for i in range(7):
        for j in range(7):
            assert bool(m[i, j]) == (copy[i] != copy[j]), (i, j)


def test_pose_mask_groups():
    # 2 denoising persons, 2 matching groups, groups of 3 tokens.
    m = pose_attention_mask([1], number=2, num_groups=2, group_size=3, num_heads=1)[0]
    group = torch.arange(12) // 3
    dn_tok = group < 2
    for i in range(12):
        for j in range(12):
            if not dn_tok[i]:        # matching tokens: own group only, never denoising
                assert bool(m[i, j]) == (group[i] != group[j]), (i, j)
            elif dn_tok[j]:          # denoising -> denoising: own person only
                assert bool(m[i, j]) == (group[i] != group[j]), (i, j)
            else:                    # denoising -> matching: allowed
                assert not m[i, j]


def test_batch_masks_follow_each_images_person_count():
    m = box_attention_mask([2, 0], number=4, num_queries=1, num_heads=3)
    assert m.shape == (6, 5, 5)
    assert m[0, 0, 2] and not m[0, 0, 1]         # image 0: copies of 2
    assert not m[3, :4, :4].any()                # image 1 has no persons: fillers unrestricted
    assert m[3, 4, :4].all()                     # but matching still cannot see them


def test_power_law_counts():
    g = torch.Generator().manual_seed(0)
    n = power_law_count(17, 2.0, g, size=20000)
    assert n.min() >= 1 and n.max() <= 17
    p1 = (n == 1).float().mean().item()
    want = 1 / sum(i ** -2.0 for i in range(1, 18))      # about 0.63
    assert abs(p1 - want) < 0.02
    assert (n == 2).float().mean().item() < p1 / 3        # P(2) = P(1) / 4


def test_exact_joints_counts_are_distinct_joints():
    g = torch.Generator().manual_seed(1)
    m = exact_joints(3, 50, 17, 2.0, g)
    counts = m.sum(-1)
    assert counts.min() >= 1 and counts.max() <= 17
    assert (counts == 1).float().mean() > 0.4


def test_queries_reconstruct_targets_with_bounded_noise():
    cfg = ClickPoseConfig.tiny(num_keypoints=3)
    model = build_model(cfg)
    t = {"labels": torch.tensor([1, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.4], [0.6, 0.6, 0.3, 0.2]]),
         "keypoints": torch.tensor([[0.3, 0.2, 0.3, 0.3, 0.3, 0.4, 1, 1, 1],
                                    [0.6, 0.6, 0.65, 0.6, 0.7, 0.6, 1, 0, 1]]), "area": torch.tensor([0.05, 0.04])}
    s = DenoisingSettings(number=5, box_noise_scale=0.4, keypoint_noise_scale=0.4, label_noise_ratio=0.5,
                          labelbook_size=cfg.dn_labelbook_size)
    q, tg = make_denoising_queries(model, [t], s, torch.Generator().manual_seed(0))
    assert q.num == 5 and q.box_tokens.shape == (1, 5, cfg.hidden_dim) and q.kpt_xy.shape == (1, 5, 3, 2)
    assert q.kpt_tokens.shape == (1, 5, 3, cfg.hidden_dim)
    assert tg.valid.all()
    # Copies in order: 0, 1, 0, 1, then one random person; targets are the clean ground truth.
    assert torch.equal(tg.boxes[0, :4], t["boxes"][[0, 1, 0, 1]])
    clean = tg.boxes[0]
    noisy = q.box_refs[0]
    bound = torch.cat([clean[:, 2:] / 2, clean[:, 2:]], -1) * 0.4 + 1e-6
    assert ((noisy - clean).abs() <= bound).all()
    assert not torch.allclose(noisy, clean)
    assert q.box_mask.shape == (cfg.nheads, 5 + cfg.num_queries, 5 + cfg.num_queries)
    assert q.pose_mask.shape[-1] == (5 + cfg.num_group) * 4
    # Keypoint noise is at most 0.4 * half the noised box size; at least one joint per person is exact.
    kxy = tg.keypoints[0, :, :6].view(5, 3, 2)
    err = (q.kpt_xy[0] - kxy).abs()
    assert (err <= noisy[:, None, 2:] / 2 * 0.4 + 1e-6).all()
    assert ((err == 0).all(-1).sum(-1) >= 1).all()
