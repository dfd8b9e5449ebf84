"""The training loop: a few steps lower the loss; resuming continues bit for bit."""
import dataclasses
import json
import math
import os
import shutil

import pytest
import torch

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.checkpoint import build_from_checkpoint
from clickpose_core.synth.generator import SceneConfig, generate_dataset
from clickpose_core.training.data import CocoKeypoints, collate
from clickpose_core.training.engine import TrainConfig, Trainer, compute_losses


def make_synth(tmp_path_factory, name: str, images: int, seed: int, width: int = 96, height: int = 128,
               max_people: int = 2) -> tuple[str, str]:
    """A small synthetic COCO set without occluders: (images folder, annotation file)."""
    out = tmp_path_factory.mktemp(name)
    generate_dataset(out, images, seed=seed, width=width, height=height, image_format="png",
                     cfg=SceneConfig(min_people=1, max_people=max_people, max_objects=0))
    return str(out / "images"), str(out / "annotations.json")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory, "synth", 4, seed=5)


def make_trainer(synth, run_dir, steps, init_seed=0, world=None, **kw):
    cfg = ClickPoseConfig.tiny()
    torch.manual_seed(init_seed)
    ds = CocoKeypoints(*synth, cfg, train=True, seed=0)
    tcfg = TrainConfig(steps=steps, **{"batch_size": 2, "checkpoint_every": 2, "log_every": 1, **kw})
    return Trainer(build_model(cfg), ds, tcfg, str(run_dir), **({"world": world} if world else {}))


def batch_loss(trainer, batch, seed=123):
    with torch.no_grad():
        losses = compute_losses(trainer.model, trainer.criterion, *batch, torch.Generator().manual_seed(seed))
    return trainer.criterion.total(losses).item()


def test_a_few_steps_on_one_image_lower_the_loss(synth, tmp_path):
    trainer = make_trainer(synth, tmp_path, steps=8, lr=1e-3, lr_backbone=1e-3)
    ds = trainer.dataset
    ds.train = False                                   # the same image every step
    batch = collate([ds[0]])
    before = batch_loss(trainer, batch)
    for _ in range(8):
        trainer.train_step(*batch)
    after = batch_loss(trainer, batch)
    assert after < 0.95 * before, (before, after)


def test_resume_continues_exactly(synth, tmp_path):
    straight = make_trainer(synth, tmp_path / "a", steps=4)
    straight.fit(progress=False)

    first = make_trainer(synth, tmp_path / "b", steps=2)
    first.fit(progress=False)
    resumed = make_trainer(synth, tmp_path / "b", steps=4, init_seed=99)   # different init: must be overwritten
    resumed.resume(str(tmp_path / "b" / "last.pth"))
    assert resumed.step == 2
    resumed.fit(progress=False)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    log_a = [json.loads(x) for x in open(tmp_path / "a" / "log.jsonl")]
    log_b = [json.loads(x) for x in open(tmp_path / "b" / "log.jsonl")]
    assert [x["loss"] for x in log_a] == [x["loss"] for x in log_b]


def test_resume_after_a_crash_logs_each_step_once(synth, tmp_path):
    first = make_trainer(synth, tmp_path, steps=2)
    first.fit(progress=False)
    with open(tmp_path / "log.jsonl", "a") as log:      # steps logged after the last checkpoint, then a crash
        log.write(json.dumps({"loss": -1.0, "step": 3}) + "\n")
    resumed = make_trainer(synth, tmp_path, steps=4)
    resumed.resume(str(tmp_path / "last.pth"))
    resumed.fit(progress=False)
    log = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    assert [x["step"] for x in log] == [1, 2, 3, 4] and all(x["loss"] > 0 for x in log)


def test_checkpoints_load_as_model_weights(synth, tmp_path):
    trainer = make_trainer(synth, tmp_path, steps=2)
    trainer.fit(progress=False)
    for name in ("last.pth", "final.pth", "step_000002.pth"):
        model, ckpt = build_from_checkpoint(str(tmp_path / name))
        assert ckpt.config == trainer.model.config and ckpt.meta["step"] == 2
        assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in model.state_dict().items())


def test_command_trains_resumes_and_exports(synth, tmp_path):
    from clickpose_core.cli import main
    from clickpose_core.checkpoint import read_checkpoint

    run = tmp_path / "run"
    images, annotations = synth
    assert main(["train", "--images", images, "--annotations", annotations, "--out", str(run), "--preset", "tiny",
                 "--steps", "2", "--checkpoint-every", "2", "--threads", "1", "--no-progress"]) == 0
    with pytest.raises(SystemExit):      # refuses to overwrite a run
        main(["train", "--images", images, "--annotations", annotations, "--out", str(run), "--preset", "tiny"])
    assert main(["train", "--resume", str(run / "last.pth"), "--steps", "3", "--lr", "3e-4", "--no-progress"]) == 0
    ckpt = read_checkpoint(str(run / "last.pth"))
    assert ckpt.meta["step"] == 3 and ckpt.meta["train_config"]["lr"] == 3e-4
    assert ckpt.meta["train_config"]["lr_backbone"] == TrainConfig.lr_backbone
    assert [json.loads(x)["step"] for x in open(run / "log.jsonl")] == [2, 3]   # window ends + the last step
    with pytest.raises(SystemExit, match="--minutes must be a positive number"):
        main(["train", "--resume", str(run / "last.pth"), "--minutes", "0", "--no-progress"])
    with pytest.raises(SystemExit, match="training data not found.*--images"):
        main(["train", "--resume", str(run / "last.pth"), "--images", str(tmp_path / "gone"), "--no-progress"])
    moved = tmp_path / "moved"
    shutil.copytree(os.path.dirname(images), moved)
    assert main(["train", "--resume", str(run / "last.pth"), "--steps", "4", "--images", str(moved / "images"),
                 "--annotations", str(moved / "annotations.json"), "--no-progress"]) == 0
    assert read_checkpoint(str(run / "last.pth")).meta["images"] == str(moved / "images")
    out = tmp_path / "weights.pth"
    assert main(["train", "--resume", str(run / "last.pth"), "--export", str(out), "--licence", "test-licence"]) == 0
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"model", "config", "meta"} and raw["meta"]["licence"] == "test-licence"
    assert all(v.dtype == torch.float32 for v in raw["model"].values() if v.is_floating_point())


def test_training_memorises_one_image_end_to_end(tmp_path):
    """Training targets, the model and the predictor agree on coordinates: the tiny model trained
    from scratch on one image finds that person's keypoints through Predictor + COCO evaluation
    (a resize, coordinate-normalisation or box-format mismatch on the way would keep AP near 0)."""
    from clickpose_core.config import COCO_SIGMAS
    from clickpose_core.evaluation.data import EvalDataset
    from clickpose_core.evaluation.refiners import PredictorRefiner
    from clickpose_core.evaluation.runner import evaluate
    from clickpose_core.predictor import Predictor

    generate_dataset(tmp_path, 1, seed=5, width=96, height=128, image_format="png",
                     cfg=SceneConfig(min_people=1, max_people=1, max_objects=0))
    cfg = ClickPoseConfig.tiny()
    torch.manual_seed(0)
    ds = CocoKeypoints(str(tmp_path / "images"), str(tmp_path / "annotations.json"), cfg, train=False, seed=0)
    trainer = Trainer(build_model(cfg), ds, TrainConfig(steps=500, batch_size=1, lr=1e-3, lr_backbone=1e-3),
                      str(tmp_path / "run"))
    truth = EvalDataset(tmp_path / "annotations.json", tmp_path / "images")

    def keypoint_ap() -> float:
        trainer.model.eval()
        res = evaluate(PredictorRefiner(Predictor(trainer.model, cache_size=1)), truth, COCO_SIGMAS,
                       ap_clicks=(0,), box_clicks=(0,), max_rounds=1)
        trainer.model.train()
        return res["keypoint_ap"]["0"]["AP"]

    assert keypoint_ap() < 0.1
    batch = collate([ds[0]])
    for _ in range(500):
        trainer.train_step(*batch)
    assert keypoint_ap() >= 0.8


def test_a_non_finite_loss_stops_training_with_a_clear_error(synth, tmp_path):
    trainer = make_trainer(synth, tmp_path, steps=1)
    with torch.no_grad():
        trainer.model.class_embed[-1].bias.fill_(float("nan"))     # the last layer's person scores
    with pytest.raises(FloatingPointError, match="not finite at step 0"):
        trainer.train_step(*next(trainer.batches()))


def test_a_session_time_limit_saves_the_run_and_logs_its_last_steps(synth, tmp_path):
    trainer = make_trainer(synth, tmp_path, steps=10_000, log_every=10_000)   # only the stop logs
    trainer.fit(progress=False, minutes=0.02)
    assert 0 < trainer.step < 10_000
    lines = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    assert [x["step"] for x in lines] == [trainer.step] and math.isfinite(lines[0]["loss"])
    resumed = make_trainer(synth, tmp_path, steps=trainer.step + 1)
    resumed.resume(str(tmp_path / "last.pth"))
    assert resumed.step == trainer.step and (tmp_path / f"step_{trainer.step:06d}.pth").exists()


@pytest.fixture(scope="module")
def synth12(tmp_path_factory):
    return make_synth(tmp_path_factory, "synth12", 12, seed=6, width=64, height=96, max_people=1)


def test_the_data_order_goes_on_from_the_same_image_when_the_processes_change(synth12, tmp_path):
    from clickpose_core.training.distributed import World

    def next_ids(trainer) -> list[int]:
        return [int(t["image_id"]) for t in next(trainer.batches())[2]]

    one = make_trainer(synth12, tmp_path, steps=2)      # 1 process x batch 2: images 0-3 of the epoch
    one.fit(progress=False)
    # The same run in one process with a step of 4 images would take images 4-7 next...
    wide = make_trainer(synth12, tmp_path / "w", steps=4, batch_size=4)
    wide.resume(str(tmp_path / "last.pth"))
    expected = next_ids(wide)
    # ...and in 2 processes of 2 images, rank 0 takes 4-5 and rank 1 takes 6-7.
    ranks = []
    for rank in (0, 1):
        two = make_trainer(synth12, tmp_path / "t", steps=4, processes=2, world=World(rank, 2))
        two.resume(str(tmp_path / "last.pth"))
        ranks += next_ids(two)
    assert ranks == expected and len(set(expected)) == 4
    # Checkpoints from before the cursor was saved: the step count and the saved step size say it.
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    del state["trainer"]["epoch"], state["trainer"]["epoch_images"]
    torch.save(state, tmp_path / "old.pth")
    old = make_trainer(synth12, tmp_path / "o", steps=4, batch_size=4)
    old.resume(str(tmp_path / "old.pth"))
    assert (old.epoch, old.epoch_images) == (wide.epoch, wide.epoch_images) == (0, 4)


def test_export_can_average_the_runs_snapshots(synth, tmp_path):
    from clickpose_core.checkpoint import read_checkpoint
    from clickpose_core.cli import main

    images, annotations = synth
    run = tmp_path / "run"
    assert main(["train", "--images", images, "--annotations", annotations, "--out", str(run), "--preset", "tiny",
                 "--steps", "6", "--checkpoint-every", "2", "--threads", "1", "--no-progress"]) == 0
    out = tmp_path / "mean.pth"
    assert main(["train", "--resume", str(run / "last.pth"), "--export", str(out), "--average-since", "3"]) == 0
    mean = read_checkpoint(str(out))
    four, six = (read_checkpoint(str(run / f"step_{s:06d}.pth")).state_dict for s in (4, 6))
    assert mean.meta["averaged_steps"] == [4, 6]
    moved = [k for k in four if four[k].is_floating_point() and not torch.equal(four[k], six[k])]
    assert moved, "the snapshots differ"
    for k in moved:
        assert torch.allclose(mean.state_dict[k], (four[k].double() + six[k].double()).div(2).float(), atol=1e-7)
    with pytest.raises(SystemExit, match="no step_.*snapshot from step 99"):
        main(["train", "--resume", str(run / "last.pth"), "--export", str(out), "--average-since", "99"])
    with pytest.raises(SystemExit, match="goes with --export"):
        main(["train", "--resume", str(run / "last.pth"), "--average-since", "2"])


def test_command_sets_the_input_size_of_a_new_run(synth, tmp_path):
    from clickpose_core.checkpoint import read_checkpoint, save_checkpoint
    from clickpose_core.cli import main

    images, annotations = synth
    start = tmp_path / "start.pth"
    save_checkpoint(start, build_model(ClickPoseConfig.tiny()), {})
    run = tmp_path / "run"
    assert main(["train", "--images", images, "--annotations", annotations, "--out", str(run), "--init", str(start),
                 "--min-size", "96", "--max-size", "120", "--steps", "1", "--threads", "1", "--no-progress"]) == 0
    cfg = read_checkpoint(str(run / "last.pth")).model_config()
    assert (cfg.min_size, cfg.max_size) == (96, 120)
    assert cfg == dataclasses.replace(ClickPoseConfig.tiny(), min_size=96, max_size=120)
    image, _ = CocoKeypoints(images, annotations, cfg, train=False, seed=0)[0]     # 96x128 pictures
    assert max(image.shape[-2:]) == 120
    with pytest.raises(SystemExit, match="a resumed run keeps its own"):
        main(["train", "--resume", str(run / "last.pth"), "--min-size", "128"])
    with pytest.raises(SystemExit, match="exceeds the long-side limit"):
        main(["train", "--images", images, "--annotations", annotations, "--out", str(tmp_path / "x"),
              "--preset", "tiny", "--min-size", "256"])
    with pytest.raises(SystemExit, match="at least 32 pixels"):
        main(["train", "--images", images, "--annotations", annotations, "--out", str(tmp_path / "x"),
              "--preset", "tiny", "--min-size", "8"])
