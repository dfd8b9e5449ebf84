"""Synthetic people: geometry, visibility from the rendered buffer, COCO format, determinism."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from clickpose_core.cli import main as cli_main
from clickpose_core.config import COCO_KEYPOINT_NAMES, COCO_SKELETON
from clickpose_core.synth import figure as fg
from clickpose_core.synth import render as rd
from clickpose_core.synth.generator import (OBJECT_ID0, SceneConfig, ScenePerson, draw_person, generate_dataset,
                                            joint_visibility, parse_size, render_scene)


def standing(yaw: float, **kw) -> fg.PoseParams:
    base = dict(pose="standing", yaw=yaw, lean=0.0, roll=0.0, head_yaw=0.0, head_pitch=0.0,
                shoulder_flex=(0.0, 0.0), shoulder_abd=(15.0, 15.0), elbow=(10.0, 10.0), elbow_twist=(0.0, 0.0),
                hip_flex=(0.0, 0.0), hip_abd=(5.0, 5.0), knee=(0.0, 0.0))
    base.update(kw)
    return fg.PoseParams(**base)


def placed(params: fg.PoseParams, height=200.0, at=(100.0, 120.0)) -> ScenePerson:
    return ScenePerson(fig=fg.build_figure(params), height=height, offset=np.array(at), depth=1.0,
                       pose=params.pose, colours={}, sleeves_long=True, shorts=False)


def test_front_view_has_left_joints_on_image_right_and_back_view_swaps():
    front = fg.build_figure(standing(0.0)).joints
    back = fg.build_figure(standing(180.0)).joints
    for left, right in ((fg.L_SHOULDER, fg.R_SHOULDER), (fg.L_HIP, fg.R_HIP), (fg.L_EYE, fg.R_EYE)):
        assert front[left, 0] > front[right, 0]
        assert back[left, 0] < back[right, 0]
    # proportions: head on top, ankles at the bottom, total about one body height
    assert front[fg.NOSE, 1] < front[fg.L_SHOULDER, 1] < front[fg.L_HIP, 1] < front[fg.L_KNEE, 1] < front[fg.L_ANKLE, 1]
    assert 0.85 < front[fg.L_ANKLE, 1] - front[fg.L_EYE, 1] < 1.0


def test_limb_lengths_are_kept_by_every_pose():
    rng = np.random.default_rng(0)
    body = fg.Body()
    for _ in range(50):
        j = fg.build_figure(fg.sample_pose(rng), body).joints
        assert np.linalg.norm(j[fg.L_ELBOW] - j[fg.L_SHOULDER]) == pytest.approx(body.upper_arm)
        assert np.linalg.norm(j[fg.R_WRIST] - j[fg.R_ELBOW]) == pytest.approx(body.forearm)
        assert np.linalg.norm(j[fg.L_KNEE] - j[fg.L_HIP]) == pytest.approx(body.thigh)
        assert np.linalg.norm(j[fg.R_ANKLE] - j[fg.R_KNEE]) == pytest.approx(body.shin)


def test_unoccluded_front_view_person_is_fully_visible():
    ids = np.zeros((320, 200), np.uint16)
    person = placed(standing(0.0))
    depths = draw_person(ids, 0, person)
    kp, vis = joint_visibility(ids, 0, person, depths)
    assert vis.tolist() == [2] * 17
    assert np.allclose(kp, person.to_px(person.fig.joints), rtol=0, atol=0.005)   # stored to 2 decimals


def test_object_in_front_hides_exactly_the_joints_it_covers():
    ids = np.zeros((320, 200), np.uint16)
    person = placed(standing(0.0))
    depths = draw_person(ids, 0, person)
    kp_all = person.to_px(person.fig.joints)
    cut = (kp_all[fg.L_HIP, 1] + kp_all[fg.L_KNEE, 1]) / 2          # a wall covering the legs
    rd.draw_hull(ids, np.array([[0, cut], [199, cut], [199, 319], [0, 319]]), OBJECT_ID0)
    _, vis = joint_visibility(ids, 0, person, depths)
    legs = [fg.L_KNEE, fg.R_KNEE, fg.L_ANKLE, fg.R_ANKLE]
    assert all(vis[j] == 1 for j in legs)
    assert all(vis[j] == 2 for j in range(17) if j not in legs)


def test_nearer_person_occludes_farther_one():
    ids = np.zeros((320, 260), np.uint16)
    far, near = placed(standing(0.0), at=(110.0, 120.0)), placed(standing(0.0), at=(130.0, 125.0))
    d_far = draw_person(ids, 0, far)
    draw_person(ids, 1, near)
    kp, vis = joint_visibility(ids, 0, far, d_far)
    hidden = vis == 1
    assert hidden.sum() >= 3
    # every hidden joint of the far person lies on a pixel of the near one, every visible one on its own
    for j in range(17):
        owner = (int(ids[int(round(kp[j, 1])), int(round(kp[j, 0]))]) - 1) // fg.NUM_PARTS
        assert owner == (1 if hidden[j] else 0)


def test_profile_view_hides_far_eye_and_far_arm_behind_torso():
    ids = np.zeros((320, 200), np.uint16)
    # facing image-right (yaw +90): the person's right side faces the camera
    person = placed(standing(90.0, shoulder_abd=(5.0, 5.0), elbow=(0.0, 0.0)))
    depths = draw_person(ids, 0, person)
    _, vis = joint_visibility(ids, 0, person, depths)
    assert vis[fg.R_EYE] == 2 and vis[fg.L_EYE] == 1
    assert vis[fg.R_EAR] == 2 and vis[fg.L_EAR] == 1
    assert vis[fg.L_SHOULDER] == 1 and vis[fg.R_SHOULDER] == 2


def test_back_view_hides_the_face_but_not_the_ears():
    ids = np.zeros((320, 200), np.uint16)
    person = placed(standing(180.0))
    _, vis = joint_visibility(ids, 0, person, draw_person(ids, 0, person))
    assert vis[[fg.NOSE, fg.L_EYE, fg.R_EYE]].tolist() == [1, 1, 1]
    assert vis[[fg.L_EAR, fg.R_EAR]].tolist() == [2, 2]


def test_joints_outside_the_image_are_zero_with_flag_zero():
    ids = np.zeros((320, 200), np.uint16)
    person = placed(standing(0.0), at=(100.0, 280.0))   # legs below the bottom edge
    kp, vis = joint_visibility(ids, 0, person, draw_person(ids, 0, person))
    out = [fg.L_ANKLE, fg.R_ANKLE, fg.L_KNEE, fg.R_KNEE]
    assert (vis[out] == 0).all() and (kp[out] == 0).all()


def test_annotations_agree_with_rendered_masks():
    for index in range(6):
        img, anns = render_scene(5, index, 192, 256)
        assert img.shape == (256, 192, 3) and img.dtype == np.uint8
        assert 1 <= len(anns) <= 6
        for a in anns:
            k = np.array(a["keypoints"]).reshape(17, 3)
            m = mask_utils.decode(a["segmentation"])
            assert set(np.unique(k[:, 2])) <= {0, 1, 2}
            assert (k[k[:, 2] == 0, :2] == 0).all()
            assert a["num_keypoints"] == int((k[:, 2] > 0).sum())
            assert a["area"] == m.sum() == mask_utils.area(a["segmentation"])
            assert a["bbox"] == pytest.approx(mask_utils.toBbox(a["segmentation"]).tolist())
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 192 and y + h <= 256
            for xx, yy, v in k:
                if v == 2:       # a visible joint shows its own person
                    assert m[int(np.floor(yy + 0.5)), int(np.floor(xx + 0.5))] == 1
            assert a["iscrowd"] == 0 and a["category_id"] == 1


def test_scenes_cover_coco_size_ranges_and_pose_families():
    areas, poses, flags = [], set(), set()
    for index in range(40):
        _, anns = render_scene(1, index, 384, 512)
        areas += [a["area"] for a in anns]
        poses |= {a["synth_pose"] for a in anns}
        flags |= {v for a in anns for v in a["keypoints"][2::3]}
    areas = np.array(areas)
    assert (areas < 32 ** 2).sum() >= 5
    assert ((areas >= 32 ** 2) & (areas < 96 ** 2)).sum() >= 10
    assert (areas >= 96 ** 2).sum() >= 10
    assert poses == set(fg.POSES) and flags == {0, 1, 2}


def test_dataset_is_deterministic_and_coco_shaped(tmp_path):
    a = generate_dataset(tmp_path / "a", 3, seed=7, width=128, height=160)
    generate_dataset(tmp_path / "b", 3, seed=7, width=128, height=160)
    generate_dataset(tmp_path / "c", 3, seed=8, width=128, height=160)
    for name in ["annotations.json"] + [f"images/{i:06d}.png" for i in range(3)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/images/000000.png").read_bytes() != (tmp_path / "c/images/000000.png").read_bytes()
    cat = a["categories"][0]
    assert cat["keypoints"] == list(COCO_KEYPOINT_NAMES)
    assert cat["skeleton"] == [[i + 1, j + 1] for i, j in COCO_SKELETON] and min(min(s) for s in cat["skeleton"]) == 1
    assert [im["id"] for im in a["images"]] == [1, 2, 3]
    assert len({an["id"] for an in a["annotations"]}) == len(a["annotations"])
    # a prefix of a larger dataset is the smaller dataset
    generate_dataset(tmp_path / "d", 2, seed=7, width=128, height=160)
    assert (tmp_path / "d/images/000001.png").read_bytes() == (tmp_path / "a/images/000001.png").read_bytes()


def test_parallel_generation_writes_the_same_files(tmp_path):
    one = generate_dataset(tmp_path / "one", 10, seed=5, width=128, height=160, image_format="jpg")
    two = generate_dataset(tmp_path / "two", 10, seed=5, width=128, height=160, image_format="jpg", workers=2)
    assert one == two and len(one["annotations"]) > 10
    for name in ["annotations.json"] + [f"images/{i:06d}.jpg" for i in range(10)]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(tmp_path / "bad", 1, workers=0)


def test_generation_speed():
    start = time.perf_counter()
    for i in range(10):
        render_scene(2, i, 384, 512)
    assert time.perf_counter() - start < 5.0      # ~60 ms/image on one core; generous for shared CPUs


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("384by512")
    with pytest.raises(ValueError, match="at least 16x16"):
        parse_size("8x8")
    with pytest.raises(ValueError, match="min_people"):
        SceneConfig(min_people=3, max_people=2)
    with pytest.raises(ValueError, match="unknown pose family"):
        fg.sample_pose(np.random.default_rng(0), "flying")


def test_cli_synth_writes_dataset(tmp_path, capsys):
    assert cli_main(["synth", "--out", str(tmp_path), "--num-images", "2", "--seed", "3", "--size", "96x128"]) == 0
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert len(coco["images"]) == 2 and coco["images"][0]["width"] == 96 and coco["images"][0]["height"] == 128
    assert (tmp_path / "images/000001.png").is_file()
    assert "wrote 2 images" in capsys.readouterr().out
