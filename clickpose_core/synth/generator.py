"""Synthetic multi-person scenes with exact COCO keypoint annotations.

`render_scene(seed, index, width, height)` draws one image and returns its COCO annotations;
`generate_dataset(out_dir, ...)` writes `images/*.png` and `annotations.json`. Image i depends only
on (seed, i), so datasets are byte-for-byte reproducible and a prefix of a larger run is identical
to a smaller run.

Visibility flags come from the rendered id buffer (entity and body part of every pixel):
  v=0  joint outside the image (x = y = 0, as COCO writes unlabeled joints);
  v=1  inside, but the pixel is not this person's (another person, an object, or background in a
       gap of a tiny figure), or belongs to a part of the same person
       that lies in front of the joint (self-occlusion), or a face point turned away from the camera;
  v=2  inside and the pixel shows the joint's own body part.
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from clickpose_core.config import COCO_KEYPOINT_NAMES, COCO_SKELETON
from clickpose_core.synth import figure as fg
from clickpose_core.synth import render as rd

OBJECT_ID0 = 1000                    # id-buffer values >= this are occluding objects
# Face keypoints are only "seen" when their surface faces the camera this much (cosine).
_FACING_MIN = (0.15, 0.15, 0.15, -0.35, -0.35)
_SELF_OCCLUSION_MARGIN = 0.03        # body heights: a same-person part this far in front hides a joint
MIN_AREA = 12                        # pixels; persons smaller than this after occlusion are not annotated


@dataclass(frozen=True)
class SceneConfig:
    """What a scene may contain. Sizes are person heights in pixels at a 512-pixel-high image."""

    min_people: int = 1
    max_people: int = 6
    max_objects: int = 3
    size_mix: tuple[float, float, float] = (0.25, 0.4, 0.35)   # small / medium / large
    small: tuple[float, float] = (28.0, 75.0)
    medium: tuple[float, float] = (75.0, 230.0)
    large: tuple[float, float] = (230.0, 620.0)

    def __post_init__(self) -> None:
        if not 1 <= self.min_people <= self.max_people:
            raise ValueError(f"need 1 <= min_people <= max_people, got {self.min_people}, {self.max_people}")
        if self.max_people > 60:
            raise ValueError("max_people must be at most 60 (id buffer layout)")


def person_id(p: int, part: int) -> int:
    return 1 + p * fg.NUM_PARTS + part


@dataclass
class ScenePerson:
    fig: fg.Figure3D
    height: float          # pixels per body height
    offset: np.ndarray     # pixel position of the pelvis
    depth: float           # scene depth key: larger is nearer
    pose: str
    colours: dict
    sleeves_long: bool
    shorts: bool

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        return pts[..., :2] * self.height + self.offset

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        pts = np.concatenate([self.to_px(p[1]) for p in self.fig.parts] + [self.to_px(self.fig.joints)])
        pad = 0.07 * self.height
        return pts.min(0) - pad, pts.max(0) + pad


def _sample_person(rng: np.random.Generator, cfg: SceneConfig, w: int, h: int) -> ScenePerson:
    params = fg.sample_pose(rng)
    fig = fg.build_figure(params, fg.Body.sample(rng))
    r = rng.uniform()
    lo, hi = cfg.small if r < cfg.size_mix[0] else cfg.medium if r < cfg.size_mix[0] + cfg.size_mix[1] else cfg.large
    height = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * h / 512.0
    # Place the figure's box centre; large people often end up cut by the border.
    pts = np.concatenate([fig.joints[:, :2]] + [p[1][:, :2] for p in fig.parts]) * height
    centre = (pts.min(0) + pts.max(0)) / 2
    for _ in range(20):
        target = np.array([rng.uniform(-0.08, 1.08) * w, rng.uniform(0.0, 1.0) * h])
        lo_, hi_ = pts.min(0) - centre + target, pts.max(0) - centre + target
        inter = np.clip(np.minimum(hi_, [w, h]) - np.maximum(lo_, [0, 0]), 0, None).prod()
        if inter >= 0.35 * (hi_ - lo_).prod():
            break
    skin = rd.SKIN_TONES[rng.integers(len(rd.SKIN_TONES))] * rng.uniform(0.9, 1.05)
    colours = {"skin": skin, "hair": rd.HAIR_TONES[rng.integers(len(rd.HAIR_TONES))],
               "shirt": rd.random_colour(rng), "pants": rd.random_colour(rng, dark=rng.uniform() < 0.6),
               "shoes": rd.random_colour(rng, dark=True)}
    return ScenePerson(fig=fig, height=height, offset=target - centre, depth=height * rng.uniform(0.7, 1.3),
                   pose=params.pose, colours=colours, sleeves_long=bool(rng.uniform() < 0.5),
                   shorts=bool(rng.uniform() < 0.25))


def draw_person(ids: np.ndarray, p: int, person: ScenePerson) -> np.ndarray:
    """Rasterise the parts far-to-near into `ids`; return each part's depth (body heights)."""
    depths = np.array([float(pts[:, 2].mean()) for _, pts, _ in person.fig.parts])
    depths[fg.PART_INDEX["torso"]] -= 0.02   # limbs attached at the torso's depth go in front of it
    for q in np.argsort(depths, kind="stable"):
        kind, pts, thick = person.fig.parts[q]
        px = person.to_px(pts)
        value = person_id(p, int(q))
        if kind == "hull":
            rd.draw_hull(ids, px, value)
        elif kind == "capsule":
            rd.draw_capsule(ids, px[0], px[1], thick * person.height, value)
        else:  # head and hair: round in every view, tilted with the head's up axis
            up = px[2] - px[0]
            ang = np.degrees(np.arctan2(up[1], up[0])) - 90.0
            ax = (np.linalg.norm(pts[1] - pts[0]) * person.height, np.linalg.norm(pts[2] - pts[0]) * person.height)
            rd.draw_ellipse(ids, px[0], (ax[0], ax[1]), ang, value)
    return depths


def _draw_object(ids: np.ndarray, rng: np.random.Generator, o: int, w: int, h: int) -> None:
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    sw, sh = rng.uniform(0.05, 0.35) * w, rng.uniform(0.05, 0.35) * h
    if rng.uniform() < 0.5:
        ang = rng.uniform(-30, 30)
        box = cv2.boxPoints(((cx, cy), (sw, sh), ang))
        rd.draw_hull(ids, box, OBJECT_ID0 + o)
    else:
        rd.draw_ellipse(ids, np.array([cx, cy]), (sw / 2, sh / 2), rng.uniform(0, 180), OBJECT_ID0 + o)


def joint_visibility(ids: np.ndarray, p: int, person: ScenePerson, depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel keypoints [17, 2] and COCO flags [17] read off the rendered id buffer."""
    h, w = ids.shape
    # Rounded as written to the json, so a reader looking up the stored pixel sees the same thing.
    kp = np.round(person.to_px(person.fig.joints), 2)
    vis = np.zeros(fg.NUM_JOINTS, dtype=np.int64)
    for j in range(fg.NUM_JOINTS):
        c, r = int(np.floor(kp[j, 0] + 0.5)), int(np.floor(kp[j, 1] + 0.5))
        if not (0 <= c < w and 0 <= r < h):
            continue                                   # v = 0: outside the image
        top = int(ids[r, c])
        first = person_id(p, 0)
        if not first <= top < first + fg.NUM_PARTS:
            vis[j] = 1                                 # another person or an object is in front
        else:
            q = top - first
            joint_z = person.fig.joints[j, 2]
            hidden = q not in fg.JOINT_OWN_PARTS[j] and depths[q] > joint_z + _SELF_OCCLUSION_MARGIN
            if j < 5 and person.fig.facing[j] < _FACING_MIN[j]:
                hidden = True                          # face point turned away (back of the head)
            vis[j] = 1 if hidden else 2
    kp = np.where(vis[:, None] > 0, kp, 0.0)
    return kp, vis


_GROUPS = {
    "skin": ("head", "neck", "l_hand", "r_hand"),
    "hair": ("hair",),
    "shirt": ("torso", "l_upper_arm", "r_upper_arm"),
    "pants": ("l_thigh", "r_thigh", "l_shin", "r_shin"),
    "shoes": ("l_foot", "r_foot"),
}


def _colour_person(img: np.ndarray, ids: np.ndarray, rng: np.random.Generator, p: int, person: ScenePerson,
                   box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    crop_ids = ids[y0:y1, x0:x1].astype(np.int64) - person_id(p, 0)
    mine = (crop_ids >= 0) & (crop_ids < fg.NUM_PARTS)
    if not mine.any():
        return
    part = np.where(mine, crop_ids, -1)
    groups = {g: [fg.PART_INDEX[n] for n in names] for g, names in _GROUPS.items()}
    groups["shirt" if person.sleeves_long else "skin"] += [fg.PART_INDEX["l_forearm"], fg.PART_INDEX["r_forearm"]]
    if person.shorts:
        groups["pants"] = [fg.PART_INDEX["l_thigh"], fg.PART_INDEX["r_thigh"]]
        groups["skin"] += [fg.PART_INDEX["l_shin"], fg.PART_INDEX["r_shin"]]
    ch, cw = part.shape
    out = img[y0:y1, x0:x1].astype(np.float32)
    # The lower torso is trousers: split the torso hull along the spine axis.
    pelvis = person.offset - [x0, y0]
    neck = person.to_px(person.fig.joints[[fg.L_SHOULDER, fg.R_SHOULDER]]).mean(0) - [x0, y0]
    axis = neck - pelvis
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    t = ((xx - pelvis[0]) * axis[0] + (yy - pelvis[1]) * axis[1]) / max(float(axis @ axis), 1e-6)
    torso = part == fg.PART_INDEX["torso"]
    for g, parts in groups.items():
        m = np.isin(part, parts)
        if g == "shirt":
            m &= ~(torso & (t < 0.22))
        elif g == "pants":
            m |= torso & (t < 0.22)
        if not m.any():
            continue
        kind = "solid" if g in ("skin", "hair") else None
        tex = rd.texture(rng, ch, cw, person.colours[g], kind=kind)
        out[m] = tex[m]
    # Soft shading across the body and dark outlines where parts meet, so limbs read as limbs.
    shade = 0.8 + 0.35 * (xx / max(cw, 1))[..., None] if rng.uniform() < 0.5 else 1.15 - 0.35 * (xx / max(cw, 1))[..., None]
    out = np.where(mine[..., None], out * shade, out)
    edge = np.zeros_like(mine)
    edge[:, 1:] |= part[:, 1:] != part[:, :-1]
    edge[1:, :] |= part[1:, :] != part[:-1, :]
    edge &= mine
    out[edge] *= 0.55
    img[y0:y1, x0:x1] = np.clip(out, 0, 255).astype(np.uint8)


def _draw_face(img: np.ndarray, ids: np.ndarray, p: int, person: ScenePerson, kp: np.ndarray, vis: np.ndarray) -> None:
    """Eyes, nose, mouth and ears where the keypoints are, so face keypoints mean something."""
    h = person.height
    head_id, hair_id = person_id(p, fg.PART_INDEX["head"]), person_id(p, fg.PART_INDEX["hair"])
    skin = person.colours["skin"]

    def on_head(pt: np.ndarray, ids_ok: tuple[int, ...]) -> bool:
        c, r = int(np.floor(pt[0] + 0.5)), int(np.floor(pt[1] + 0.5))
        return 0 <= r < ids.shape[0] and 0 <= c < ids.shape[1] and int(ids[r, c]) in ids_ok

    for j in (fg.L_EAR, fg.R_EAR):
        if vis[j] == 2 and on_head(kp[j], (head_id, hair_id)):
            cv2.ellipse(img, tuple(int(v) for v in np.round(kp[j])), (max(1, int(0.012 * h)), max(1, int(0.02 * h))),
                        0, 0, 360, tuple(float(v) for v in skin * 0.8), -1)
    for j in (fg.L_EYE, fg.R_EYE):
        if vis[j] == 2 and on_head(kp[j], (head_id,)):
            r = max(1, int(round(0.008 * h)))
            centre = tuple(int(v) for v in np.round(kp[j]))
            if r >= 2:
                cv2.circle(img, centre, r + 1, (240, 240, 240), -1)
            cv2.circle(img, centre, r, (20, 20, 30), -1)
    if vis[fg.NOSE] == 2 and on_head(kp[fg.NOSE], (head_id,)):
        c = tuple(int(v) for v in np.round(kp[fg.NOSE]))
        cv2.circle(img, c, max(1, int(0.006 * h)), tuple(float(v) for v in skin * 0.65), -1)
        if h > 60 and person.fig.facing[fg.NOSE] > 0.5:
            m = kp[fg.NOSE] + np.array([0.0, 0.022 * h])
            dx = 0.012 * h
            cv2.line(img, (int(m[0] - dx), int(m[1])), (int(m[0] + dx), int(m[1])), (150, 60, 60), max(1, int(0.004 * h)))


def render_scene(seed: int, index: int, width: int, height: int,
                 cfg: SceneConfig = SceneConfig()) -> tuple[np.ndarray, list[dict]]:
    """Draw image `index` of the dataset `seed`.

    Returns (image [height, width, 3] uint8 RGB, annotations) where annotations are COCO dicts
    without `id`/`image_id`: keypoints (flat [x, y, v] * 17), num_keypoints, bbox (xywh of the
    person's visible pixels), area (visible pixel count), segmentation (RLE), iscrowd=0,
    category_id=1, plus `synth_pose` (the pose family) for analysis.
    """
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16, got {width}x{height}")
    rng = np.random.default_rng([int(seed), int(index)])
    img = rd.background(rng, height, width)
    n_people = int(rng.integers(cfg.min_people, cfg.max_people + 1))
    people = [_sample_person(rng, cfg, width, height) for _ in range(n_people)]
    n_obj = int(rng.integers(0, cfg.max_objects + 1))
    depth_range = [pp.depth for pp in people]
    entities = [("person", i, pp.depth) for i, pp in enumerate(people)]
    entities += [("object", o, rng.uniform(min(depth_range) * 0.8, max(depth_range) * 1.2)) for o in range(n_obj)]
    entities.sort(key=lambda e: e[2])

    ids = np.zeros((height, width), dtype=np.uint16)
    depths: dict[int, np.ndarray] = {}
    for kind, i, _ in entities:
        if kind == "person":
            depths[i] = draw_person(ids, i, people[i])
        else:
            _draw_object(ids, rng, i, width, height)

    for o in range(n_obj):
        m = ids == OBJECT_ID0 + o
        if m.any():
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            tex = rd.texture(rng, y1 - y0, x1 - x0, rd.random_colour(rng))
            sub = img[y0:y1, x0:x1]
            sub[m[y0:y1, x0:x1]] = np.clip(tex[m[y0:y1, x0:x1]], 0, 255).astype(np.uint8)
    annotations = []
    for i, person in enumerate(people):
        lo, hi = person.bounds()
        box = (max(0, int(lo[0])), max(0, int(lo[1])), min(width, int(np.ceil(hi[0])) + 1), min(height, int(np.ceil(hi[1])) + 1))
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        _colour_person(img, ids, rng, i, person, box)
        kp, vis = joint_visibility(ids, i, person, depths[i])
        _draw_face(img, ids, i, person, kp, vis)
        crop = ids[box[1]:box[3], box[0]:box[2]].astype(np.int64) - person_id(i, 0)
        mine = (crop >= 0) & (crop < fg.NUM_PARTS)
        area = int(mine.sum())
        if area < MIN_AREA:
            continue                       # hidden or off-image: nothing left to annotate
        ys, xs = np.nonzero(mine)
        bx, by = box[0] + int(xs.min()), box[1] + int(ys.min())
        bw, bh = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
        full = np.zeros((height, width), dtype=np.uint8, order="F")
        full[box[1]:box[3], box[0]:box[2]] = mine
        rle = mask_utils.encode(full)
        flat = np.concatenate([kp, vis[:, None].astype(np.float64)], axis=1)
        annotations.append({
            "keypoints": [round(float(v), 2) for v in flat.reshape(-1)],
            "num_keypoints": int((vis > 0).sum()),
            "bbox": [float(bx), float(by), float(bw), float(bh)],
            "area": float(area),
            "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            "iscrowd": 0,
            "category_id": 1,
            "synth_pose": person.pose,
        })
    return img, annotations


def _encoded_scene(seed: int, index: int, width: int, height: int, cfg: SceneConfig, image_format: str
                   ) -> tuple[bytes, list[dict]]:
    """Image `index` of dataset `seed`, encoded as `image_format`, and its annotations."""
    img, anns = render_scene(seed, index, width, height, cfg)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if image_format == "png" else [cv2.IMWRITE_JPEG_QUALITY, 92]
    ok, buf = cv2.imencode("." + image_format, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"could not encode image {index} of seed {seed} as {image_format}")
    return buf.tobytes(), anns


def coco_categories() -> list[dict]:
    """The COCO person category with keypoint names and the 1-based skeleton COCO uses."""
    return [{"id": 1, "name": "person", "supercategory": "person",
             "keypoints": list(COCO_KEYPOINT_NAMES),
             "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}]


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 384x512; got {text!r}") from None
    if w < 16 or h < 16:
        raise ValueError(f"size must be at least 16x16, got {text!r}")
    return w, h


def generate_dataset(out_dir: str | os.PathLike, num_images: int, seed: int = 0, width: int = 384,
                     height: int = 512, image_format: str = "png", cfg: SceneConfig = SceneConfig(),
                     progress: bool = False, workers: int = 1) -> dict:
    """Write `out_dir/images/000000.png ...` and `out_dir/annotations.json`; return the COCO dict.

    workers > 1 renders in that many processes; the files are the same as with one (image i
    depends only on (seed, i), and annotation ids are given in image order)."""
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    job = functools.partial(_encoded_scene, seed, width=width, height=height, cfg=cfg, image_format=image_format)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            scenes = pool.imap(job, range(num_images), chunksize=8)
        else:
            scenes = map(job, range(num_images))
        if progress:
            from tqdm import tqdm
            scenes = tqdm(scenes, total=num_images, desc="synth", unit="img")
        for i, (data, anns) in enumerate(scenes):
            name = f"{i:06d}.{image_format}"
            (out / "images" / name).write_bytes(data)
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for a in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    coco = {
        "info": {"description": "clickpose synthetic people", "seed": int(seed), "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    (out / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")))
    return coco
