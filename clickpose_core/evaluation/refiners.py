"""Interactive annotators under evaluation: anything with `predict` and `refine`.

The runner only needs the `Refiner` protocol, so the model (pinned product mode, the official
loop, unpinned) and the "model + manual correction" baseline are measured by the same code.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from clickpose_core.types import Click, Person


class Refiner(Protocol):
    """predict(image_id, image RGB uint8 [H, W, 3]) -> people; refine(image_id, clicks) -> people.

    People carry a stable `index` (the session row clicks refer to); `refine` gets only the
    clicks of the new round and returns every person of the image after that round.
    """

    name: str

    def predict(self, image_id: int, image: np.ndarray) -> list[Person]: ...

    def refine(self, image_id: int, clicks: Sequence[Click]) -> list[Person]: ...


class PredictorRefiner:
    """Click-Pose through `clickpose_core.predictor.Predictor`.

    pinned=True is the product mode (every click so far is held in place by the decoder);
    pinned=False re-applies every click so far each round but holds none of them. Neither is the
    released evaluation loop, which re-applies nothing: that is `OfficialLoop`.
    """

    def __init__(self, predictor, pinned: bool = True, name: str | None = None):
        self.predictor = predictor
        self.pinned = bool(pinned)
        self.name = name or ("clickpose-pinned" if pinned else "predictor-unpinned")

    def _key(self, image_id: int) -> str:
        return f"eval:{self.name}:{image_id}"

    def predict(self, image_id: int, image: np.ndarray) -> list[Person]:
        return list(self.predictor.predict(self._key(image_id), image))

    def refine(self, image_id: int, clicks: Sequence[Click]) -> list[Person]:
        return list(self.predictor.refine(self._key(image_id), list(clicks), replace=False,
                                          pinned=self.pinned))


class ManualCorrection:
    """Baseline: the model predicts once, then each click fixes exactly the clicked joint.

    Nothing else moves and scores stay; a clicked person's box grows to hold its keypoints (the
    same box rule as the interactive model), so box AP stays comparable.
    """

    def __init__(self, base: Refiner, name: str = "model+manual"):
        self.base = base
        self.name = name
        self._people: dict[int, dict[int, Person]] = {}

    def predict(self, image_id: int, image: np.ndarray) -> list[Person]:
        people = self.base.predict(image_id, image)
        self._people[image_id] = {p.index: p for p in people}
        return list(people)

    def refine(self, image_id: int, clicks: Sequence[Click]) -> list[Person]:
        if image_id not in self._people:
            raise KeyError(f"refine before predict for image {image_id}")
        people = self._people[image_id]
        for c in clicks:
            if c.person not in people:
                raise KeyError(f"click on unknown person {c.person} in image {image_id}")
            p = people[c.person]
            kp, clicked = p.keypoints.copy(), p.clicked.copy()
            kp[c.joint] = (c.x, c.y)
            clicked[c.joint] = True
            box = np.concatenate([np.minimum(p.box[:2], kp.min(0)), np.maximum(p.box[2:], kp.max(0))])
            people[c.person] = Person(index=p.index, score=p.score, box=box, keypoints=kp, clicked=clicked)
        return sorted(people.values(), key=lambda q: -q.score)


class OfficialLoop:
    """Click-Pose exactly as the official evaluation loop runs it (`human_feedback_loop_*`).

    Each round starts from the previous round's output, sets only this round's clicked joints and
    grows only the clicked rows' boxes; earlier clicks are not re-applied. Nothing is held in
    place: the official code means to zero `delta_mask` at the clicked joints but writes into a
    copy (../shared/reference/README.md), so the released numbers were measured with every joint,
    the clicked ones included, free to move. This refiner reproduces that, bug included. Output boxes are the
    decoder's, not grown. The Predictor is used for the full forward pass; the rounds then drive
    `model.refine` on its cached encoder output without touching the Predictor's own session.
    """

    def __init__(self, predictor, name: str = "clickpose-official"):
        self.predictor = predictor
        self.name = name
        self._state: dict[int, tuple] = {}

    def _key(self, image_id: int) -> str:
        return f"eval:{self.name}:{image_id}"

    def predict(self, image_id: int, image: np.ndarray) -> list[Person]:
        people = list(self.predictor.predict(self._key(image_id), image))
        s = self.predictor.session(self._key(image_id))
        r0 = s.round0
        self._state[image_id] = (s.memory, s.size, r0.boxes, r0.keypoints, r0.logits,
                                 np.zeros(tuple(r0.keypoints.shape[:2]), dtype=bool))
        return people

    def refine(self, image_id: int, clicks: Sequence[Click]) -> list[Person]:
        import torch

        from clickpose_core.interaction import apply_clicks
        from clickpose_core.postprocess import person_scores, split_keypoints, to_pixels

        if image_id not in self._state:
            raise KeyError(f"refine before predict for image {image_id}")
        memory, (h, w), boxes, kpts, _, clicked = self._state[image_id]
        model = self.predictor.model
        norm = [Click(c.person, c.joint, c.x / w, c.y / h) for c in clicks]
        boxes, kpts, pin = apply_clicks(boxes, kpts, norm)        # pin: this round's clicks only
        with torch.inference_mode():
            out = model.refine(memory, boxes[None], kpts[None], None)   # official: nothing held
        boxes = out["pred_boxes"][0]
        kpts = split_keypoints(out["pred_keypoints"][0], model.config.num_keypoints)
        logits = out["pred_logits"][0]
        clicked = clicked | pin.cpu().numpy()
        self._state[image_id] = (memory, (h, w), boxes, kpts, logits, clicked)
        pb, pk = to_pixels(boxes.double(), kpts.double(), (h, w))
        scores = person_scores(logits.double()).cpu().numpy()
        pb, pk = pb.cpu().numpy(), pk.cpu().numpy()
        order = np.argsort(-scores, kind="stable")
        return [Person(int(r), float(scores[r]), pb[r].copy(), pk[r].copy(), clicked[r].copy()) for r in order]
