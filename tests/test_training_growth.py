"""Deepening a trained pose decoder: the new layers start as identity steps and then learn."""
import pytest
import torch

from clickpose_core.checkpoint import read_checkpoint, save_checkpoint
from clickpose_core.training.data import collate
from clickpose_core.training.engine import TrainConfig, Trainer
from clickpose_core.training.growth import deepen_pose_decoder
from .models import tiny_random_model
from .test_training_engine import make_synth


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory, "synth_growth", 2, seed=11)


def image_and_mask(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 3, 128, 160, generator=g)
    masks = torch.zeros(1, 128, 160, dtype=torch.bool)
    masks[:, :, 150:] = True                      # some padding, as in a real batch
    return images, masks


def test_new_pose_layers_start_as_identity_steps():
    old = tiny_random_model(seed=3)
    new = deepen_pose_decoder(old, 2).eval()
    assert new.config.dec_layers == old.config.dec_layers + 2
    assert new.config.num_pose_layers == old.config.num_pose_layers + 2
    images, masks = image_and_mask()
    with torch.no_grad():
        before = old.decode(old.encode(images, masks), with_aux=True)
        after = new.decode(new.encode(images, masks), with_aux=True)
    old_layers = before["aux_outputs"] + [{k: before[k] for k in ("pred_logits", "pred_boxes", "pred_keypoints")}]
    new_layers = after["aux_outputs"] + [{k: after[k] for k in ("pred_logits", "pred_boxes", "pred_keypoints")}]
    n = len(old_layers)
    for a, b in zip(old_layers, new_layers[:n]):        # the trained layers are untouched
        assert all(torch.equal(a[k], b[k]) for k in a)
    first, second = new_layers[n], new_layers[n + 1]
    # Person scores stay the old network's; boxes and keypoints are what the last old layer passed
    # on, and an identity step passes them on again unchanged (only the sampling windows of the
    # keypoints change: their size head is shared by every pose layer).
    for layer in (first, second):
        torch.testing.assert_close(layer["pred_logits"], before["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(second["pred_boxes"], first["pred_boxes"], atol=1e-6, rtol=0)
    torch.testing.assert_close(second["pred_keypoints"], first["pred_keypoints"], atol=1e-6, rtol=0)
    # The old network is left as it was (the new one is a copy, not a view of its weights).
    assert not any(p.data_ptr() == q.data_ptr() for p in old.parameters() for q in new.parameters())


def test_deepened_network_keeps_clicked_joints_pinned():
    new = deepen_pose_decoder(tiny_random_model(seed=4), 1).eval()
    dec = new.transformer.decoder
    with torch.no_grad():        # as if trained: the new layer's keypoint offsets are no longer zero
        dec.pose_embed[-2].layers[-1].weight.normal_(0.0, 0.05)
        dec.pose_embed[-2].layers[-1].bias.normal_(0.0, 0.05)
    images, masks = image_and_mask(1)
    k = new.config.num_keypoints
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.6]]])
    keypoints = torch.rand(1, 1, k, 2, generator=torch.Generator().manual_seed(2)) * 0.4 + 0.3
    pinned = torch.zeros(1, 1, k, dtype=torch.bool)
    pinned[0, 0, 5] = True
    with torch.no_grad():
        out = new.refine(new.encode(images, masks), boxes, keypoints, pinned)
    xy = out["pred_keypoints"][..., : 2 * k].unflatten(-1, (k, 2))
    torch.testing.assert_close(xy[0, 0, 5], keypoints[0, 0, 5], atol=1e-6, rtol=0)
    assert (xy[0, 0, ~pinned[0, 0]] - keypoints[0, 0, ~pinned[0, 0]]).abs().max() > 1e-4   # the others moved


def test_the_new_layers_learn(synth, tmp_path):
    from clickpose_core.training.data import CocoKeypoints

    new = deepen_pose_decoder(tiny_random_model(seed=5).train(), 1)
    dataset = CocoKeypoints(*synth, new.config, train=False, seed=0)
    trainer = Trainer(new, dataset, TrainConfig(steps=3, batch_size=1, lr=1e-3, lr_backbone=1e-3,
                                                warmup_steps=0, log_every=1, checkpoint_every=3), str(tmp_path))
    layer = new.transformer.decoder.layers[-1]
    zeroed = [layer.linear2.weight, layer.cross_attn.output_proj.weight, new.transformer.decoder.pose_embed[-2].layers[-1].weight]
    assert all(torch.count_nonzero(w) == 0 for w in zeroed)
    batch = collate([dataset[0]])
    for _ in range(3):
        trainer.train_step(*batch)
    assert all(torch.count_nonzero(w) > 0 for w in zeroed)


def test_command_deepens_the_init_weights(synth, tmp_path):
    from clickpose_core.cli import main

    images, annotations = synth
    start = tmp_path / "start.pth"
    save_checkpoint(start, tiny_random_model(seed=6), {"licence": "test"})
    run = tmp_path / "run"
    assert main(["train", "--images", images, "--annotations", annotations, "--out", str(run), "--init", str(start),
                 "--add-pose-layers", "2", "--steps", "1", "--threads", "1", "--no-progress"]) == 0
    ckpt = read_checkpoint(str(run / "last.pth"))
    assert ckpt.model_config().dec_layers == tiny_random_model().config.dec_layers + 2
    assert ckpt.meta["added_pose_layers"] == 2 and ckpt.meta["init"] == str(start)
    assert main(["train", "--resume", str(run / "last.pth"), "--steps", "2", "--no-progress"]) == 0
    assert read_checkpoint(str(run / "last.pth")).meta["added_pose_layers"] == 2
    data = ["--images", images, "--annotations", annotations, "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit, match="deepens the weights of --init"):
        main(["train", *data, "--preset", "tiny", "--add-pose-layers", "1"])
    with pytest.raises(SystemExit, match="must be 0 or more"):
        main(["train", *data, "--init", str(start), "--add-pose-layers", "-1"])
    with pytest.raises(SystemExit, match="a resumed run keeps its own"):
        main(["train", "--resume", str(run / "last.pth"), "--add-pose-layers", "1"])
    with pytest.raises(SystemExit, match="a resumed run keeps its own"):      # nor does an export
        main(["train", "--resume", str(run / "last.pth"), "--export", str(tmp_path / "w.pth"), "--add-pose-layers", "1"])
    assert not (tmp_path / "x").exists()
