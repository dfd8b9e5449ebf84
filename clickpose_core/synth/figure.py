"""An articulated 3-D stick figure with the 17 COCO joints, posed from a kinematic tree.

The body is built in its own frame (units of body height, y down, x towards the person's LEFT,
z towards the camera when the person faces it), rotated about the vertical axis by the view yaw
and projected orthographically. Working in 3-D rather than drawing a 2-D skeleton is what makes
back views swap left and right in the image and what gives every body part a depth, so the
renderer can decide self-occlusion instead of guessing it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Joint indices in COCO order (see clickpose_core.config.COCO_KEYPOINT_NAMES).
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 13, 14, 15, 16
NUM_JOINTS = 17

POSES: tuple[str, ...] = ("standing", "walking", "arms_raised", "sitting", "crouching", "free")
_POSE_WEIGHTS = np.array([0.22, 0.24, 0.16, 0.12, 0.10, 0.16])

# Body parts, drawn as filled shapes. `own` lists the joints that lie on the part: a joint
# covered only by its own parts is visible, so a wrist on its hand is not "occluded by the hand".
PART_NAMES: tuple[str, ...] = (
    "torso", "head", "hair", "neck",
    "l_upper_arm", "l_forearm", "r_upper_arm", "r_forearm",
    "l_thigh", "l_shin", "r_thigh", "r_shin",
    "l_hand", "r_hand", "l_foot", "r_foot",
)
PART_INDEX = {n: i for i, n in enumerate(PART_NAMES)}
NUM_PARTS = len(PART_NAMES)
JOINT_OWN_PARTS: tuple[frozenset[int], ...] = tuple(frozenset(PART_INDEX[p] for p in parts) for parts in (
    ("head", "hair"), ("head", "hair"), ("head", "hair"), ("head", "hair"), ("head", "hair"),
    ("torso", "l_upper_arm", "neck"), ("torso", "r_upper_arm", "neck"),
    ("l_upper_arm", "l_forearm"), ("r_upper_arm", "r_forearm"),
    ("l_forearm", "l_hand"), ("r_forearm", "r_hand"),
    ("torso", "l_thigh"), ("torso", "r_thigh"),
    ("l_thigh", "l_shin"), ("r_thigh", "r_shin"),
    ("l_shin", "l_foot"), ("r_shin", "r_foot"),
))


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def limb_direction(flex_deg: float, abd_deg: float, side: float) -> np.ndarray:
    """Direction of a limb hanging from its root: flex swings it forwards (+z), abd sideways.

    flex=0, abd=0 points straight down; side=+1 is the person's left (+x).
    """
    f, a = np.radians(flex_deg), np.radians(abd_deg)
    return np.array([side * np.sin(a) * np.cos(f), np.cos(a) * np.cos(f), np.sin(f)])


def bend(u: np.ndarray, angle_deg: float, towards: np.ndarray, fallback: np.ndarray,
         twist_deg: float = 0.0) -> np.ndarray:
    """Rotate unit vector u by angle towards the component of `towards` orthogonal to u."""
    p = towards - np.dot(towards, u) * u
    if np.linalg.norm(p) < 0.3:  # u nearly parallel to the preferred bend axis
        p = fallback - np.dot(fallback, u) * u
    p = _unit(p)
    if twist_deg:
        t = np.radians(twist_deg)
        p = p * np.cos(t) + np.cross(u, p) * np.sin(t)
    a = np.radians(angle_deg)
    return _unit(np.cos(a) * u + np.sin(a) * p)


@dataclass(frozen=True)
class PoseParams:
    """Joint angles in degrees (flexion forwards is positive) and the view yaw."""

    pose: str
    yaw: float
    lean: float
    roll: float
    head_yaw: float
    head_pitch: float
    shoulder_flex: tuple[float, float]   # (left, right)
    shoulder_abd: tuple[float, float]
    elbow: tuple[float, float]
    elbow_twist: tuple[float, float]
    hip_flex: tuple[float, float]
    hip_abd: tuple[float, float]
    knee: tuple[float, float]


def sample_pose(rng: np.random.Generator, pose: str | None = None) -> PoseParams:
    """Draw a plausible pose: a pose family, then angles within per-joint limits."""
    if pose is None:
        pose = str(rng.choice(POSES, p=_POSE_WEIGHTS / _POSE_WEIGHTS.sum()))
    u = rng.uniform
    view = rng.uniform()
    if view < 0.42:
        yaw = rng.normal(0, 18)              # facing the camera
    elif view < 0.58:
        yaw = 180 + rng.normal(0, 18)        # back view: left and right swap in the image
    elif view < 0.78:
        yaw = rng.choice([-90.0, 90.0]) + rng.normal(0, 12)  # profile
    else:
        yaw = rng.choice([-45.0, 45.0, -135.0, 135.0]) + rng.normal(0, 8)
    lean, roll = rng.normal(0, 4), rng.normal(0, 3)
    head_yaw, head_pitch = float(np.clip(rng.normal(0, 20), -60, 60)), float(np.clip(rng.normal(0, 8), -25, 30))

    if pose == "standing":
        sf = (rng.normal(0, 12), rng.normal(0, 12))
        sa = (u(5, 25), u(5, 25))
        el = (u(0, 35), u(0, 35))
        hf = (rng.normal(0, 4), rng.normal(0, 4))
        ha = (u(0, 12), u(0, 12))
        kn = (u(0, 8), u(0, 8))
    elif pose == "walking":
        amp = u(15, 35) * rng.choice([-1, 1])
        hf = (amp, -amp)
        kn = (u(0, 15), u(10, 40)) if amp > 0 else (u(10, 40), u(0, 15))
        sf = (-0.8 * amp + rng.normal(0, 5), 0.8 * amp + rng.normal(0, 5))
        sa = (u(5, 15), u(5, 15))
        el = (u(10, 45), u(10, 45))
        ha = (u(0, 6), u(0, 6))
    elif pose == "arms_raised":
        both = rng.uniform() < 0.6
        raised = (True, True) if both else ((True, False) if rng.uniform() < 0.5 else (False, True))
        sa = tuple(u(80, 170) if r else u(5, 25) for r in raised)
        sf = tuple(u(-10, 50) if r else rng.normal(0, 10) for r in raised)
        el = tuple(u(0, 100) if r else u(0, 30) for r in raised)
        hf = (rng.normal(0, 5), rng.normal(0, 5))
        ha = (u(0, 20), u(0, 20))
        kn = (u(0, 10), u(0, 10))
    elif pose == "sitting":
        hf = (u(70, 100), u(70, 100))
        kn = (u(70, 110), u(70, 110))
        ha = (u(0, 25), u(0, 25))
        sf = (u(10, 60), u(10, 60))
        sa = (u(5, 25), u(5, 25))
        el = (u(20, 100), u(20, 100))
        lean = rng.normal(5, 8)
    elif pose == "crouching":
        hf = (u(90, 130), u(90, 130))
        kn = (u(110, 150), u(110, 150))
        ha = (u(5, 30), u(5, 30))
        sf = (u(20, 90), u(20, 90))
        sa = (u(5, 30), u(5, 30))
        el = (u(10, 100), u(10, 100))
        lean = u(20, 45)
    elif pose == "free":
        sf = (u(-40, 150), u(-40, 150))
        sa = (u(0, 160), u(0, 160))
        el = (u(0, 140), u(0, 140))
        hf = (u(-20, 70), u(-20, 70))
        ha = (u(0, 35), u(0, 35))
        kn = (u(0, 100), u(0, 100))
        lean = rng.normal(0, 12)
    else:
        raise ValueError(f"unknown pose family {pose!r}; expected one of {POSES}")
    twist = (u(-40, 40), u(-40, 40))
    return PoseParams(pose=pose, yaw=float(yaw), lean=float(lean), roll=float(roll),
                      head_yaw=head_yaw, head_pitch=head_pitch,
                      shoulder_flex=tuple(map(float, sf)), shoulder_abd=tuple(map(float, sa)),
                      elbow=tuple(map(float, el)), elbow_twist=tuple(map(float, twist)),
                      hip_flex=tuple(map(float, hf)), hip_abd=tuple(map(float, ha)),
                      knee=tuple(map(float, kn)))


@dataclass(frozen=True)
class Body:
    """Per-person shape: limb lengths and widths as fractions of body height."""

    upper_arm: float = 0.17
    forearm: float = 0.15
    thigh: float = 0.245
    shin: float = 0.25
    shoulder_half: float = 0.125
    hip_half: float = 0.085
    width: float = 1.0        # multiplies every thickness

    @staticmethod
    def sample(rng: np.random.Generator) -> "Body":
        s = rng.normal(1.0, 0.035, size=4)
        w = float(rng.uniform(0.85, 1.25))
        return Body(upper_arm=0.17 * s[0], forearm=0.15 * s[1], thigh=0.245 * s[2], shin=0.25 * s[3],
                    shoulder_half=0.125 * float(rng.uniform(0.9, 1.1)), hip_half=0.085 * w, width=w)


@dataclass(frozen=True)
class Figure3D:
    """A posed figure after the view rotation, in body-height units (y down, z towards camera).

    joints: [17, 3]; parts: per PART_NAMES entry a tuple (kind, points [n, 3], thickness) where
    kind is 'hull' (filled convex hull of the points), 'capsule' (segment with round ends of the
    given thickness) or 'ellipse' (points = centre, x-axis end, y-axis end);
    facing: [5] z-component of the outward surface normal at nose, eyes and ears (> 0 faces the
    camera), used to decide whether a face keypoint can be seen at all.
    """

    joints: np.ndarray
    parts: tuple[tuple[str, np.ndarray, float], ...]
    facing: np.ndarray


def build_figure(params: PoseParams, body: Body = Body()) -> Figure3D:
    """Forward kinematics: joint angles -> 3-D joints and body-part shapes."""
    b = body
    torso = rot_z(np.radians(params.roll)) @ rot_x(np.radians(-params.lean))
    pelvis = rot_z(np.radians(params.roll * 0.3))
    head = torso @ rot_y(np.radians(params.head_yaw)) @ rot_x(np.radians(-params.head_pitch))
    fwd, up = np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0])

    j = np.zeros((NUM_JOINTS, 3))
    neck_base = torso @ np.array([0.0, -0.33, 0.0])
    neck_top = torso @ np.array([0.0, -0.385, 0.0])
    head_c = neck_top + head @ np.array([0.0, -0.065, 0.0])
    j[NOSE] = head_c + head @ np.array([0.0, 0.012, 0.062])
    j[L_EYE] = head_c + head @ np.array([0.027, -0.008, 0.05])
    j[R_EYE] = head_c + head @ np.array([-0.027, -0.008, 0.05])
    j[L_EAR] = head_c + head @ np.array([0.057, 0.0, -0.004])
    j[R_EAR] = head_c + head @ np.array([-0.057, 0.0, -0.004])
    normals = np.stack([head @ _unit(np.array(n)) for n in
                        ((0, 0.1, 1), (0.45, 0, 0.9), (-0.45, 0, 0.9), (1, 0, -0.05), (-1, 0, -0.05))])

    hands, feet = [], []
    for i, side in enumerate((1.0, -1.0)):   # 0: left (+x), 1: right
        sh, el, wr = (L_SHOULDER, L_ELBOW, L_WRIST) if i == 0 else (R_SHOULDER, R_ELBOW, R_WRIST)
        hp, kn, an = (L_HIP, L_KNEE, L_ANKLE) if i == 0 else (R_HIP, R_KNEE, R_ANKLE)
        j[sh] = torso @ np.array([side * b.shoulder_half, -0.325, 0.0])
        ua = torso @ limb_direction(params.shoulder_flex[i], params.shoulder_abd[i], side)
        j[el] = j[sh] + b.upper_arm * ua
        # Elbows fold forwards; an arm held out sideways folds upwards instead.
        fa = bend(ua, params.elbow[i], torso @ rot_x(np.pi / 2) @ ua, torso @ up, params.elbow_twist[i])
        j[wr] = j[el] + b.forearm * fa
        hands.append((j[wr], j[wr] + 0.045 * fa))
        j[hp] = pelvis @ np.array([side * b.hip_half, 0.0, 0.0])
        th = limb_direction(params.hip_flex[i], params.hip_abd[i], side)
        j[kn] = j[hp] + b.thigh * th
        # Knees fold backwards (-z).
        sn = bend(th, params.knee[i], rot_x(-np.pi / 2) @ th, -fwd)
        j[an] = j[kn] + b.shin * sn
        toe = j[an] + 0.075 * _unit(np.array([side * 0.15, 0.25, 1.0])) + np.array([0, 0.02, 0])
        feet.append((j[an] + np.array([0, 0.015, -0.015]), toe))

    w = b.width
    # Torso: hull of shoulder and hip corners pushed to the front and back of the chest, so a
    # profile view shows the body's depth rather than a line.
    corners = []
    for base, half, ref in ((neck_base + torso @ np.array([0, -0.005, 0]), b.shoulder_half + 0.02, torso),
                            (np.zeros(3), b.hip_half + 0.035 * w, pelvis)):
        for s in (1.0, -1.0):
            for d in (0.06 * w, -0.05 * w):
                corners.append(base + ref @ np.array([s * half, 0.0, d]))
    waist = torso @ np.array([0, -0.15, 0])
    for s in (1.0, -1.0):
        for d in (0.055 * w, -0.05 * w):
            corners.append(waist + torso @ np.array([s * (b.hip_half + 0.015) * w, 0, d]))
    parts: list[tuple[str, np.ndarray, float]] = [("hull", np.array(corners), 0.0)]
    hr = np.array([0.052, 0.066])
    parts.append(("ellipse", np.stack([head_c, head_c + head @ np.array([hr[0], 0, 0]),
                                       head_c + head @ np.array([0, hr[1], 0])]), 0.0))
    hair_c = head_c + head @ np.array([0.0, -0.012, -0.014])
    parts.append(("ellipse", np.stack([hair_c, hair_c + head @ np.array([hr[0] * 1.04, 0, 0]),
                                       hair_c + head @ np.array([0, hr[1] * 0.95, 0])]), 0.0))
    parts.append(("capsule", np.stack([neck_base, neck_top + head @ np.array([0, -0.02, 0])]), 0.05 * w))
    for sh, el, wr in ((L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST)):
        parts.append(("capsule", np.stack([j[sh], j[el]]), 0.058 * w))
        parts.append(("capsule", np.stack([j[el], j[wr]]), 0.046 * w))
    for hp, kn, an in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        parts.append(("capsule", np.stack([j[hp], j[kn]]), 0.088 * w))
        parts.append(("capsule", np.stack([j[kn], j[an]]), 0.064 * w))
    for a, c in hands:
        parts.append(("capsule", np.stack([a, c]), 0.05))
    for a, c in feet:
        parts.append(("capsule", np.stack([a, c]), 0.045))
    assert len(parts) == NUM_PARTS

    view = rot_y(np.radians(params.yaw))
    joints = j @ view.T
    parts_v = tuple((kind, pts @ view.T, thick) for kind, pts, thick in parts)
    facing = (normals @ view.T)[:, 2]
    return Figure3D(joints=joints, parts=parts_v, facing=facing)
