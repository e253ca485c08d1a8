"""Ecosystem teachers and students (fasttarget.zoo), final.pt, extending and --force of runs.

Every network is randomly initialised here and its state dict saved by the test: nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fasttarget.dataset import DatasetMeta
from fasttarget.errors import UserError
from fasttarget.models import ModelConfig, Student, load_classifier
from fasttarget.targets import load_teacher
from fasttarget.train import TrainConfig, train
from fasttarget.zoo import IMAGENET_MEAN, IMAGENET_STD, TeacherSpec, parse_teacher

sys.path.insert(0, str(Path(__file__).parent))  # tests/zoo_students.py, the module:factory students

QUICK = dict(ipc=20, batch_size=32, device="cpu", progress=False)


def torchvision_state(path: Path, name: str = "resnet18", num_classes: int = 10) -> Path:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(name, weights=None, num_classes=num_classes).state_dict(), path)
    return path


def read_json(path: Path):
    return json.loads(path.read_text())


def test_a_torchvision_teacher_scores_the_view_at_its_own_normalization_and_size(small_sample_dir, tmp_path):
    import torchvision

    meta = DatasetMeta.load(small_sample_dir)
    state = torchvision_state(tmp_path / "r18.pt")
    teacher, accuracy = load_teacher(f"torchvision:resnet18@48={state}", meta, "cpu")
    assert accuracy != accuracy  # NaN: a state dict records no accuracy

    pixels = torch.rand(4, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (meta.mean, meta.std))
    loader_view = (pixels - mean) / std  # what the loader emits
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    net.load_state_dict(torch.load(state))
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = net.eval()(F.interpolate(imagenet, size=(48, 48), mode="bilinear", antialias=True))
    torch.testing.assert_close(teacher(loader_view), expected, atol=1e-4, rtol=1e-4)
    # uint8 views are taken too: the same pixels, rounded to 0..255
    as_uint8 = (pixels * 255).round().to(torch.uint8)
    torch.testing.assert_close(teacher(as_uint8), teacher((as_uint8.float() / 255 - mean) / std), atol=1e-4, rtol=1e-4)
    # without @SIZE, torchvision's ImageNet resolution
    assert load_teacher(f"torchvision:resnet18={state}", meta, "cpu")[0].input_size == 224


def test_torchvision_teacher_trains_b_and_builds_a_cache(small_sample_dir, tmp_path, run_cli, one_thread):
    state = torchvision_state(tmp_path / "r18.pt")
    spec = f"torchvision:resnet18@32={state}"
    final = train(TrainConfig(data=small_sample_dir, out=tmp_path / "b", strategy="B", teacher=spec, steps=2,
                              eval_every=2, width=0.125, **QUICK))
    assert final["status"] == "done"
    config = read_json(tmp_path / "b" / "config.json")
    assert config["teacher"] == str(parse_teacher(spec).absolute()) and len(config["teacher_sha256"]) == 64

    code, out, err = run_cli("cache", "build", "--data", small_sample_dir, "--teacher", spec, "--out", tmp_path / "t.h5",
                             "--device", "cpu", "--batch-size", "1000")
    assert code == 0, err
    code, out, err = run_cli("cache", "inspect", tmp_path / "t.h5", "--data", small_sample_dir, "--teacher", spec)
    assert code == 0 and "checksum: ok" in out, err
    assert 0 <= float(re.search(r"teacher_test_accuracy: (\S+)", out).group(1)) <= 1  # measured on the test split
    # the same weights at another size are another teacher
    code, _, err = run_cli("cache", "inspect", tmp_path / "t.h5", "--teacher", f"torchvision:resnet18@64={state}")
    assert code == 2 and "teacher" in err


def test_a_timm_teacher_and_student(small_sample_dir, tmp_path, one_thread):
    timm = pytest.importorskip("timm", reason="timm is the optional extra fasttarget[timm]")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=10).state_dict(), tmp_path / "t.pt")
    teacher, _ = load_teacher(f"timm:test_resnet={tmp_path / 't.pt'}", DatasetMeta.load(small_sample_dir), "cpu")
    assert teacher.input_size == 160  # timm's pretrained_cfg input_size
    final = train(TrainConfig(data=small_sample_dir, out=tmp_path / "run", strategy="B", arch="timm:test_resnet",
                              teacher=f"timm:test_resnet@32={tmp_path / 't.pt'}", steps=2, eval_every=2, **QUICK))
    assert final["status"] == "done"
    assert read_json(tmp_path / "run" / "config.json")["arch"] == "timm:test_resnet"


@pytest.mark.parametrize("factory, feature_dim", [("classifier", 32), ("backbone", 24), ("declared", 10)])
def test_a_factory_student_gets_the_heads_on_its_features(factory, feature_dim):
    student = Student(ModelConfig(arch=f"zoo_students:{factory}", num_classes=10, image_size=32))
    assert student.backbone.feature_dim == feature_dim
    assert (student.g.in_features, student.h.in_features, student.h.out_features) == (feature_dim, feature_dim, 10)
    g, h = student(torch.rand(3, 3, 32, 32))
    assert g.shape == h.shape == (3, 10)
    h.sum().backward()  # separation: h's loss does not reach the backbone
    assert all(p.grad is None for p in student.backbone.parameters())


def test_a_custom_student_resumes_extends_and_its_final_pt_is_a_teacher(small_sample_dir, tmp_path, run_cli, one_thread):
    """A module:factory student trained 4 steps at once equals one trained 2, then extended to 4
    (--resume --steps 4): weights, optimizer and metrics bit for bit. Its final.pt is then a B
    teacher and a cache's teacher."""
    common = dict(data=small_sample_dir, strategy="A", arch="zoo_students:classifier", eval_every=2, aug="stdaug+mixup",
                  seed=5, **QUICK)
    straight = train(TrainConfig(out=tmp_path / "straight", steps=4, **common))
    train(TrainConfig(out=tmp_path / "extended", steps=2, **common))
    assert read_json(tmp_path / "extended" / "final.json")["step"] == 2
    with pytest.raises(UserError, match="lower it to 1"):
        train(TrainConfig(out=tmp_path / "extended", steps=1, resume=True, **common))
    with pytest.raises(UserError, match="aug='stdaug\\+mixup', not 'stdaug'"):  # anything else is still refused
        train(TrainConfig(out=tmp_path / "extended", steps=4, resume=True, **{**common, "aug": "stdaug"}))
    extended = train(TrainConfig(out=tmp_path / "extended", steps=4, resume=True, **common))

    assert {k: v for k, v in extended.items() if k != "wall_s"} == {k: v for k, v in straight.items() if k != "wall_s"}
    timing = ("img_per_s", "wall_s")
    rows = [[{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("straight", "extended")]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == [2, 4]
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=False) for run in ("straight", "extended"))
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key
    config = read_json(tmp_path / "extended" / "config.json")
    assert config["steps"] == 4 and config["extended_from"] == [2] and config["arch"] == "zoo_students:classifier"

    net, info = load_classifier(tmp_path / "straight" / "final.pt")
    assert info.model.arch == "zoo_students:classifier" and info.step == 4
    assert info.test_accuracy == straight["test_acc_h"]
    student = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=False)["student"]
    assert torch.equal(net.head.weight, student["h.weight"])  # the classifier h, not the soft-target head g
    # final.pt as a teacher: Strategy B, and a cache built from it
    final_pt = tmp_path / "straight" / "final.pt"
    assert train(TrainConfig(data=small_sample_dir, out=tmp_path / "b", strategy="B", teacher=final_pt, steps=2,
                             eval_every=2, width=0.125, **QUICK))["status"] == "done"
    code, out, err = run_cli("cache", "build", "--data", small_sample_dir, "--teacher", final_pt, "--out", tmp_path / "c.h5",
                             "--device", "cpu")
    assert code == 0 and "640 rows" in out, err


def test_force_replaces_an_existing_run(small_sample_dir, tmp_path, one_thread):
    common = dict(data=small_sample_dir, out=tmp_path / "run", strategy="A", width=0.125, eval_every=2, **QUICK)
    train(TrainConfig(steps=4, **common))
    final = train(TrainConfig(steps=2, lr=2e-3, force=True, **common))
    assert final["step"] == 2
    assert read_json(tmp_path / "run" / "config.json")["lr"] == 2e-3
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [2]
    assert load_classifier(tmp_path / "run" / "final.pt")[1].step == 2


def test_bad_ecosystem_inputs_are_one_line_errors(small_sample_dir, tmp_path, user_error, monkeypatch):
    state = torchvision_state(tmp_path / "r18.pt")
    torchvision_state(tmp_path / "r34.pt", "resnet34")
    train_b = ["train", "--data", small_sample_dir, "--out", tmp_path / "run", "--strategy", "B", "--device", "cpu"]
    user_error("unknown torchvision teacher", *train_b, "--teacher", f"torchvision:resnet19={state}",
               expect="unknown torchvision classification model 'resnet19'")
    user_error("state dict of another architecture", *train_b, "--teacher", f"torchvision:resnet18={tmp_path / 'r34.pt'}",
               expect=("does not fit torchvision:resnet18 with 10 classes", "unexpected keys"))
    user_error("ecosystem teacher without its file", *train_b, "--teacher", "torchvision:resnet18",
               expect="torchvision:NAME=FILE")
    user_error("missing state dict", *train_b, "--teacher", f"torchvision:resnet18={tmp_path / 'none.pt'}",
               expect="does not exist")
    user_error("unknown student", "train", "--data", small_sample_dir, "--out", tmp_path / "run", "--strategy", "A",
               "--student", "resnet19", expect=("unknown architecture 'resnet19'", "torchvision:NAME"))
    user_error("student factory not callable", "train", "--data", small_sample_dir, "--out", tmp_path / "run",
               "--strategy", "A", "--student", "zoo_students:not_a_factory", "--device", "cpu",
               expect="no callable 'not_a_factory'")
    user_error("student factory returning no module", "train", "--data", small_sample_dir, "--out", tmp_path / "run",
               "--strategy", "A", "--student", "zoo_students:not_a_module", "--device", "cpu",
               expect="returned str, not an nn.Module")
    user_error("student module missing", "train", "--data", small_sample_dir, "--out", tmp_path / "run", "--strategy", "A",
               "--student", "no_such_module:net", "--device", "cpu", expect="cannot be imported")
    user_error("--width with an ecosystem student", "train", "--data", small_sample_dir, "--out", tmp_path / "run",
               "--strategy", "A", "--student", "torchvision:resnet18", "--width", "0.5",
               expect="--width scales the built-in architectures only")
    with pytest.raises(UserError, match="is a fasttarget checkpoint, not a state dict"):
        from fasttarget.zoo import load_spec_teacher

        torch.save({"format": "fasttarget-model/1"}, tmp_path / "ft.pt")
        load_spec_teacher(TeacherSpec("torchvision", "resnet18", tmp_path / "ft.pt"), 10, "cpu")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the extra were not installed
    user_error("timm missing", "train", "--data", small_sample_dir, "--out", tmp_path / "run", "--strategy", "A",
               "--student", "timm:test_resnet", "--device", "cpu", expect="pip install fasttarget[timm]")
