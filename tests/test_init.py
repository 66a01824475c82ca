"""Starting from weights: train.py --init-from / --init-ema / --weights, the classifier head, ViT position
embeddings interpolated to another size (train.py and eval.py), eval.py --weights with the published numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import interpolate_embeddings

import eval as evaluate
import train
from conftest import make_imagefolder
from imnet.run import models

TINY = ["--model", "deit_tiny", "--batch-size", "8", "--train-crop-size", "32", "--val-crop-size", "32",
        "--val-resize-size", "36", "--opt", "adamw", "--weight-decay", "0.05", "--workers", "0", "--quiet",
        "--log-every", "1", "--seed", "5"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def data4(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data4"), num_classes=4, train_per_class=4, val_per_class=2)


@pytest.fixture(scope="module")
def source10(tmp_path_factory) -> Path:
    """A 10-class deit_tiny run at 32 px, 2 optimizer steps, with an EMA: its last.pt is the initial weights."""
    root = make_imagefolder(tmp_path_factory.mktemp("data10"), num_classes=10, train_per_class=2, val_per_class=1)
    out = tmp_path_factory.mktemp("source10")
    assert train.main(TINY + ["--data", str(root), "--output", str(out), "--epochs", "1", "--lr", "1e-3",
                              "--ema", "--ema-decay", "0.5"]) == 0
    return out / "last.pt"


def test_a_10_class_checkpoint_initialises_a_4_class_run(source10, data4, tmp_path):
    src = load(source10)
    out = tmp_path / "run"
    # --lr 0: the one step taken changes nothing (AdamW's decay is lr x wd), so the saved weights are the
    # initial weights exactly.
    assert train.main(TINY + ["--data", str(data4), "--output", str(out), "--epochs", "1", "--lr", "0",
                              "--init-from", str(source10), "--stop-at-step", "1"]) == 0
    got = load(out / "last.pt")
    head = {"heads.head.weight", "heads.head.bias"}
    assert models.head_keys("deit_tiny", 32) == head
    for k, v in got["model"].items():
        if k not in head:
            assert torch.equal(v, src["model"][k]), k
    torch.manual_seed(5)  # train.py seeds the fresh model with --seed before loading
    fresh = models.build_model("deit_tiny", 4, image_size=32).state_dict()
    for k in head:
        assert got["model"][k].shape[0] == 4 and torch.equal(got["model"][k], fresh[k]), k
    # A new run: epoch 0, one step, an optimizer state of one step (not the source's 2 steps).
    assert src["global_step"] == 2 and got["global_step"] == 1 and got["epoch"] == 0
    assert {int(s["step"]) for s in got["optimizer"]["state"].values()} == {1}
    event = [json.loads(line) for line in open(out / "log.jsonl") if '"init"' in line][0]
    assert sorted(event["reinitialised"]) == sorted(head) and event["interpolated"] == []
    assert len(event["loaded"]) == len(got["model"]) - 2


def test_init_ema_takes_the_ema_weights(source10, data4, tmp_path):
    src = load(source10)
    out = tmp_path / "run"
    assert train.main(TINY + ["--data", str(data4), "--output", str(out), "--epochs", "1", "--lr", "0",
                              "--init-from", str(source10), "--init-ema", "--stop-at-step", "1"]) == 0
    got = load(out / "last.pt")["model"]
    k = "encoder.layers.encoder_layer_0.mlp.0.weight"
    assert torch.equal(got[k], src["state_dict_ema"][k]) and not torch.equal(got[k], src["model"][k])


def test_a_torchvision_state_dict_loads_head_and_all(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=4)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    state, classes, _ = models.init_source(str(tmp_path / "r18.pth"))
    model = models.build_model("resnet18", 4)
    done = models.load_init(model, "resnet18", state)
    assert classes is None and done["reinitialised"] == [] and len(done["loaded"]) == len(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # DDP / torch.compile prefixes are stripped
    model = models.build_model("resnet18", 4)
    models.load_init(model, "resnet18", {f"module.{k}": v for k, v in ref.state_dict().items()})
    assert torch.equal(model.conv1.weight, ref.conv1.weight)


def test_a_torchvision_pth_through_train_py(data4, tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "r18.pth")
    code = train.main(["--data", str(data4), "--model", "resnet18", "--output", str(tmp_path / "o"),
                       "--init-from", str(tmp_path / "r18.pth"), "--dry-run", "--workers", "0", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "initial weights: state_dict" in out and "120 tensors loaded" in out and "re-initialised (other classes): fc.bias, fc.weight" in out


def bad(capsys, args) -> str:
    code = train.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_a_shape_mismatch_outside_the_head_is_refused(data4, tmp_path, capsys):
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    state["layer1.0.bn1.running_mean"] = torch.zeros(32)
    torch.save(state, tmp_path / "bad.pth")
    args = ["--data", str(data4), "--model", "resnet18", "--output", str(tmp_path / "o"), "--workers", "0",
            "--batch-size", "4", "--epochs", "1"]
    err = bad(capsys, args + ["--init-from", str(tmp_path / "bad.pth")])
    assert "conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in err and "layer1.0.bn1.running_mean (32,)" in err
    del state["conv1.weight"]
    torch.save(state, tmp_path / "missing.pth")
    assert "missing 1 tensors (conv1.weight)" in bad(capsys, args + ["--init-from", str(tmp_path / "missing.pth")])
    assert "another network" in bad(capsys, args + ["--weights", "ResNet50_Weights.IMAGENET1K_V2"])
    assert "not a torchvision weights name" in bad(capsys, args + ["--weights", "ResNet18_Weights.NOPE"])
    assert "--init-ema" in bad(capsys, args + ["--init-from", str(tmp_path / "missing.pth"), "--init-ema"])
    assert "use one of them" in bad(capsys, args + ["--init-from", "x.pth", "--weights", "y"])


def cached_torchvision_weights(monkeypatch, tmp_path, name: str, model: str) -> dict:
    """Random weights placed where torchvision's download cache looks, so no network is used."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    w = torchvision.models.get_weight(name)
    assert Path(torch.hub.get_dir()) == tmp_path / "torch_home" / "hub"
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    state = torchvision.models.get_model(model, num_classes=1000).state_dict()
    torch.save(state, folder / Path(w.url).name)
    return state


def test_weights_come_from_torchvisions_cache(monkeypatch, data4, tmp_path):
    state = cached_torchvision_weights(monkeypatch, tmp_path, "ResNet18_Weights.IMAGENET1K_V1", "resnet18")
    out = tmp_path / "run"
    assert train.main(["--data", str(data4), "--model", "resnet18", "--output", str(out), "--workers", "0",
                       "--batch-size", "4", "--epochs", "1", "--stop-at-step", "1", "--lr", "0", "--momentum", "0",
                       "--weights", "ResNet18_Weights.IMAGENET1K_V1", "--quiet"]) == 0
    got = load(out / "last.pt")["model"]
    for k, v in state.items():
        if k.startswith("fc."):
            assert got[k].shape[0] == 4  # 1000 ImageNet classes -> 4: re-initialised
        elif "running_" not in k and "num_batches" not in k:  # BatchNorm statistics moved with the one step
            assert torch.equal(got[k], v), k


def test_position_embedding_interpolation_equals_torchvisions(source10):
    src = load(source10)["model"]
    model = models.build_model("deit_tiny", 10, image_size=48)
    done = models.load_init(model, "deit_tiny", src, image_size=48)
    expected = interpolate_embeddings(48, 16, dict(src))["encoder.pos_embedding"]
    assert src["encoder.pos_embedding"].shape == (1, 5, 192) and expected.shape == (1, 10, 192)
    assert done["interpolated"] == ["encoder.pos_embedding"] and done["reinitialised"] == []
    assert torch.equal(model.encoder.pos_embedding, expected)
    assert torch.equal(model.encoder.pos_embedding[:, 0], src["encoder.pos_embedding"][:, 0])  # class token kept


def test_deit_trained_at_32_is_evaluated_and_fine_tuned_at_48(source10, data4, tmp_path, capsys):
    at32, at48 = tmp_path / "at32", tmp_path / "at48"
    assert train.main(TINY + ["--data", str(data4), "--output", str(at32), "--epochs", "1", "--lr", "1e-3",
                              "--init-from", str(source10), "--stop-at-step", "1"]) == 0
    # evaluated at 48 px: the position embedding is interpolated, with a note
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(at32 / "last.pt"), "--data", str(data4), "--workers", "0",
                          "--crop-size", "48", "--resize-size", "54", "--json", str(tmp_path / "r.json")]) == 0
    assert "interpolated from a 2x2 to a 3x3 patch grid" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["count"] == 8
    # fine-tuned at 48 px from it: runs, and the log says what was interpolated
    assert train.main(TINY + ["--data", str(data4), "--output", str(at48), "--epochs", "1", "--lr", "1e-3",
                              "--init-from", str(at32 / "last.pt"), "--train-crop-size", "48",
                              "--val-crop-size", "48", "--val-resize-size", "54"]) == 0
    event = [json.loads(line) for line in open(at48 / "log.jsonl") if '"init"' in line][0]
    assert event["interpolated"] == ["encoder.pos_embedding"] and event["reinitialised"] == []
    assert load(at48 / "last.pt")["model"]["encoder.pos_embedding"].shape == (1, 10, 192)


def test_eval_weights_prints_the_published_numbers_and_class_names(monkeypatch, tmp_path, capsys):
    cached_torchvision_weights(monkeypatch, tmp_path, "ResNet18_Weights.IMAGENET1K_V1", "resnet18")
    # 1,000 wnid-named class folders of one tiny image each: names come from the weights' metadata.
    from PIL import Image
    val = tmp_path / "imagenet" / "val"
    wnids = [f"n{i:08d}" for i in range(1000)]
    Image.new("RGB", (40, 40), (200, 30, 0)).save(tmp_path / "one.JPEG")
    for w in wnids:
        (val / w).mkdir(parents=True)
        (val / w / f"{w}_0.JPEG").write_bytes((tmp_path / "one.JPEG").read_bytes())
    # at 32 px to keep the test fast: the warning then names the card's policy (256 -> 224, bilinear)
    args = ["--weights", "ResNet18_Weights.IMAGENET1K_V1", "--data", str(val.parent), "--workers", "0",
            "--crop-size", "32", "--resize-size", "32", "--batch-size", "250",
            "--json", str(tmp_path / "r.json"), "--predictions", str(tmp_path / "p.csv")]
    assert evaluate.main(args) == 0
    out, err = capsys.readouterr()
    assert "published by torchvision for ResNet18_Weights.IMAGENET1K_V1: acc@1 69.758%  acc@5 89.078%" in out
    assert "the training run's validation used resize 256 / crop 224 / bilinear" in err  # the card's policy
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["published"] == {"acc@1": 69.758, "acc@5": 89.078} and r["count"] == 1000
    assert r["per_class"]["n00000000"]["name"] == "tench" and r["per_class"]["n00000001"]["name"] == "goldfish"
    header, first = (tmp_path / "p.csv").read_text().splitlines()[:2]
    assert header.startswith("file,true_class,true_name,class1,name1,prob1")
    assert first.split(",")[1:3] == ["n00000000", "tench"]
    # LOC_synset_mapping.txt in the data root wins
    (val.parent / "LOC_synset_mapping.txt").write_text("".join(f"{w} thing {i}, alias\n" for i, w in enumerate(wnids)))
    assert evaluate.main(args) == 0
    assert json.loads((tmp_path / "r.json").read_text())["per_class"]["n00000001"]["name"] == "thing 1, alias"


def test_weights_without_internet_say_where_to_put_the_file(monkeypatch, data4, tmp_path, capsys):
    """An unreachable download (no network on a compute node): one paragraph, exit 2, the file name torchvision
    expects, the cache folder, and the flag that loads the file instead; for train.py (--dry-run included) and
    eval.py. Placing the file where the message says then works without the network."""
    import urllib.error
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def unreachable(url, dst, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    name = "ResNet18_Weights.IMAGENET1K_V1"
    file = Path(torchvision.models.get_weight(name).url).name
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    train_args = ["--data", str(data4), "--model", "resnet18", "--output", str(tmp_path / "run"), "--workers", "0",
                  "--batch-size", "4", "--weights", name]
    for args, flag in ((train_args + ["--dry-run"], "--init-from PATH/"), (train_args, "--init-from PATH/")):
        err = bad(capsys, args)
        assert len(err.strip().splitlines()) == 1, err
        assert "Temporary failure in name resolution" in err and str(folder / file) in err and flag + file in err, err
    assert not (tmp_path / "run" / "last.pt").exists()
    code = evaluate.main(["--weights", name, "--data", str(data4), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(folder / file) in err and f"--model resnet18 --weights-file PATH/{file}" in err, err
    # the file where the message says: found without the network
    folder.mkdir(parents=True, exist_ok=True)  # (torch.hub made it before its download failed)
    torch.save(torchvision.models.resnet18().state_dict(), folder / file)
    assert train.main(train_args + ["--dry-run"]) == 0
