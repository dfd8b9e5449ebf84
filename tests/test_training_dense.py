"""The dense auxiliary objective: heatmap targets on the encoder grid, the focal loss, training with it."""
import math

import pytest
import torch

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.checkpoint import read_checkpoint
from clickpose_core.training.dense import DenseKeypointHead, dense_focal_loss, dense_loss, heatmap_targets
from clickpose_core.training.engine import TrainConfig

from .test_training_engine import make_trainer, synth  # noqa: F401  (the shared synthetic fixture)


def person(cx, cy, w, h, joints, k=3):
    """A target dict for one person: box centre/size and joints [(x, y, labelled)], normalised."""
    xy = torch.tensor([[x, y] for x, y, _ in joints]).reshape(-1)
    vis = torch.tensor([float(v) for _, _, v in joints])
    return {"boxes": torch.tensor([[cx, cy, w, h]]), "keypoints": torch.cat([xy, vis])[None],
            "labels": torch.ones(1, dtype=torch.int64)}


def test_peaks_sit_on_the_cells_of_labelled_joints_and_box_centres():
    t = person(0.5, 0.5, 0.4, 0.8, [(0.1, 0.2, 1), (0.9, 0.95, 1), (0.3, 0.3, 0)])
    ratios = torch.tensor([[[1.0, 1.0]]])
    heat, peaks = heatmap_targets([t], ratios, (10, 20), num_keypoints=3)
    assert heat.shape == (1, 4, 10, 20)
    assert peaks[0, 0].nonzero().tolist() == [[2, 2]]          # y = 0.2 * 10, x = 0.1 * 20
    assert peaks[0, 1].nonzero().tolist() == [[9, 18]]
    assert not peaks[0, 2].any() and heat[0, 2].max() == 0      # unlabelled joint: no target
    assert peaks[0, 3].nonzero().tolist() == [[5, 10]]          # the person centre
    assert heat[0, 0, 2, 3].item() == pytest.approx(math.exp(-0.5))   # one cell away, sigma 1


def test_padding_shrinks_the_grid_each_image_occupies():
    t = person(0.5, 0.5, 0.2, 0.2, [(1.0, 1.0, 1)], k=1)
    heat, peaks = heatmap_targets([t], torch.tensor([[[0.5, 0.5]]]), (10, 10), num_keypoints=1)
    assert peaks[0, 0].nonzero().tolist() == [[4, 4]]          # the image fills the top-left 5x5 cells
    assert peaks[0, 1].nonzero().tolist() == [[2, 2]]


def test_focal_loss_is_small_for_the_target_and_ignores_padding():
    t = person(0.5, 0.5, 0.4, 0.8, [(0.1, 0.2, 1), (0.9, 0.9, 1), (0.3, 0.3, 1)])
    heat, peaks = heatmap_targets([t], torch.tensor([[[1.0, 1.0]]]), (8, 8), num_keypoints=3)
    no_padding = torch.zeros(1, 8, 8, dtype=torch.bool)
    good = torch.where(peaks, 9.0, -9.0)
    assert dense_focal_loss(good, heat, peaks, no_padding) < 1e-3
    assert dense_focal_loss(torch.zeros_like(good), heat, peaks, no_padding) > 0.1
    wrong_in_padding = good.clone()
    wrong_in_padding[..., :, 6:] = 9.0                              # confident everywhere in columns 6-7
    padding = torch.zeros(1, 8, 8, dtype=torch.bool)
    padding[..., 6:] = True
    assert dense_focal_loss(wrong_in_padding, heat, peaks, padding) == dense_focal_loss(good, heat, peaks, padding)


def test_head_reads_the_finest_level_of_the_encoder_memory(synth):  # noqa: F811
    trainer = make_trainer(synth, "/tmp/unused", steps=1)
    images, masks, targets = next(trainer.batches())
    mem = trainer.model.encode(images, masks)
    head = DenseKeypointHead(trainer.model.config.hidden_dim, trainer.model.config.num_keypoints)
    assert head(mem).shape == (images.shape[0], 18, *mem.layout.hw[0])
    loss = dense_loss(head, mem, targets)
    loss.backward()
    assert math.isfinite(loss.item())
    assert next(trainer.model.backbone.parameters()).grad.abs().sum() > 0   # trains the trunk
    with pytest.raises(ValueError, match="encoder memory"):
        head(mem.for_refinement())


def test_training_with_the_heatmap_saves_resumes_and_exports_without_the_head(synth, tmp_path):  # noqa: F811
    straight = make_trainer(synth, tmp_path / "a", steps=4, heatmap_weight=1.0)
    straight.fit(progress=False)
    first = make_trainer(synth, tmp_path / "b", steps=2, heatmap_weight=1.0)
    first.fit(progress=False)
    resumed = make_trainer(synth, tmp_path / "b", steps=4, heatmap_weight=1.0, init_seed=7)
    resumed.resume(str(tmp_path / "b" / "last.pth"))
    resumed.fit(progress=False)
    for a, b in ((straight.model, resumed.model), (straight.dense_head, resumed.dense_head)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "heatmap" in open(tmp_path / "a" / "log.jsonl").readline()
    weights = read_checkpoint(str(tmp_path / "a" / "final.pth"))
    assert not any("dense" in k or k.startswith("net.") for k in weights.state_dict)
    # a resume's --lr reaches the heatmap head's group as well as the network's
    other_lr = make_trainer(synth, tmp_path / "e", steps=4, heatmap_weight=1.0, lr=5e-5)
    other_lr.resume(str(tmp_path / "b" / "last.pth"))
    assert [g["base_lr"] for g in other_lr.optimizer.param_groups] == [5e-5, TrainConfig.lr_backbone, 5e-5]
    plain = make_trainer(synth, tmp_path / "c", steps=1)
    plain.save(str(tmp_path / "plain.pth"))
    with pytest.raises(ValueError, match="without the heatmap"):
        make_trainer(synth, tmp_path / "d", steps=1, heatmap_weight=1.0).resume(str(tmp_path / "plain.pth"))
