"""Data-parallel training (`--processes`): disjoint shares of each batch, identical weights on every
process after every step, exact resume."""
import functools
import json
import os

import pytest
import torch

from clickpose_core.checkpoint import read_checkpoint
from clickpose_core.cli import main
from clickpose_core.training.distributed import World, run_processes

from .test_training_engine import make_trainer, synth  # noqa: F401  (the shared synthetic fixture)


def _two_steps(synth_paths, run_dir, out_file, world: World) -> None:
    trainer = make_trainer(synth_paths, run_dir, steps=2, processes=2, world=world)
    ids = [int(t["image_id"]) for _, _, targets in [next(trainer.batches())] for t in targets]
    trainer.fit(progress=False)
    checksum = float(sum(p.double().sum() for p in trainer.model.parameters()))
    report = {"ids": [t.tolist() for t in world.gather(torch.tensor(ids))],
              "checksums": [t.item() for t in world.gather(torch.tensor(checksum, dtype=torch.float64))]}
    if world.is_main:
        with open(out_file, "w") as f:
            json.dump(report, f)


def test_processes_train_on_disjoint_images_and_hold_the_same_weights(synth, tmp_path):  # noqa: F811
    out = tmp_path / "report.json"
    run_processes(2, functools.partial(_two_steps, synth, str(tmp_path / "run"), str(out)))
    report = json.loads(out.read_text())
    ids_0, ids_1 = report["ids"]
    assert len(ids_0) == len(ids_1) == 2 and not set(ids_0) & set(ids_1)
    c0, c1 = report["checksums"]
    assert c0 == c1
    assert read_checkpoint(str(tmp_path / "run" / "last.pth")).meta["step"] == 2


def test_two_process_run_resumes_exactly(synth, tmp_path):  # noqa: F811
    images, annotations = synth
    common = ["--preset", "tiny", "--batch-size", "1", "--processes", "2", "--threads", "1", "--checkpoint-every", "2",
              "--log-every", "1", "--no-progress", "--images", images, "--annotations", annotations]
    assert main(["train", *common, "--out", str(tmp_path / "a"), "--steps", "4"]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "b"), "--steps", "2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "last.pth"), "--steps", "4", "--threads", "1",
                 "--no-progress"]) == 0
    a, b = (read_checkpoint(str(tmp_path / r / "last.pth")) for r in "ab")
    assert a.meta["step"] == b.meta["step"] == 4 and a.meta["train_config"]["processes"] == 2
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    logs = [[json.loads(x)["loss"] for x in open(tmp_path / r / "log.jsonl")] for r in "ab"]
    assert logs[0] == logs[1] and len(logs[0]) == 4
    state = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert len(state["trainer"]["generators"]) == 2
    # a deliberate change of the process count continues the run from the same step
    assert main(["train", "--resume", str(tmp_path / "b" / "last.pth"), "--steps", "5", "--processes", "1",
                 "--threads", "1", "--no-progress"]) == 0
    one = read_checkpoint(str(tmp_path / "b" / "last.pth"))
    assert one.meta["step"] == 5 and one.meta["train_config"]["processes"] == 1


def test_world_size_must_match_the_run(synth, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="configured for 2 processes but 1"):
        make_trainer(synth, tmp_path, steps=1, processes=2)
    with pytest.raises(ValueError, match="at least 1"):
        run_processes(0, print)
    images, annotations = synth
    with pytest.raises(SystemExit, match="4 images, fewer than one step's --batch-size 2 x --processes 3"):
        main(["train", "--images", images, "--annotations", annotations, "--out", str(tmp_path / "r"),
              "--preset", "tiny", "--processes", "3", "--batch-size", "2", "--no-progress"])
    assert not (tmp_path / "r").exists(), "refused before any process or file was made"


def _loopback(address: str) -> bool:
    """An address of /proc/net/tcp{,6} (hex, as the kernel writes it) on the loopback network."""
    host = address.split(":")[0]
    if len(host) == 8:
        return host.endswith("7F")                                  # 127.x.y.z, little-endian
    return host in ("0000000000000000FFFF00000100007F", "00000000000000000000000001000000")


def _tcp_sockets_of_this_process() -> list[tuple[str, str]]:
    """(local, remote) address of every TCP socket this process holds."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in list(f)[1:]:
                cols = row.split()
                if cols[9] in inodes:
                    found.append((cols[1], cols[2]))
    return found


def _sockets_and_gradients(out_dir, world: World) -> None:
    used, unused = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    if world.rank == 0:
        used.grad = torch.tensor([2.0, 4.0])      # a gradient on one process only
    world.average_gradients([used, unused])
    report = {"sockets": _tcp_sockets_of_this_process(), "used": used.grad.tolist(), "unused": unused.grad is None}
    with open(os.path.join(out_dir, f"rank{world.rank}.json"), "w") as f:
        json.dump(report, f)


def test_the_group_talks_over_loopback_only_and_keeps_missing_gradients_missing(tmp_path):
    run_processes(2, functools.partial(_sockets_and_gradients, str(tmp_path)))
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["sockets"], "the gloo group holds TCP connections"
        assert all(_loopback(local) for local, _ in report["sockets"]), report["sockets"]
        assert report["used"] == [1.0, 2.0], "averaged over both processes (zero on the other)"
        assert report["unused"], "no process had a gradient: AdamW must skip it, as in one process"
