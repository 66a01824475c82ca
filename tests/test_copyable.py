"""Each textbook module (every .py file at the top of imnet/) works when copied alone into an empty folder.

The textbook modules are meant to be copied into another project one file at a time, so each imports only the standard library, torch, torchvision,
numpy and PIL, never another imnet module. transforms.py also has an optional companion, fastjpeg.py:
copied alone it decodes with PIL and gives torchvision's boxes and pixels; with fastjpeg.py beside it, it
uses it.
"""

import ast
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

IMNET = Path(__file__).resolve().parents[1] / "imnet"
ALLOWED = {"torch", "torchvision", "numpy", "PIL"} | set(sys.stdlib_module_names)

# A smoke call per module that checks a value (run with the module imported as `m`).
SMOKE = {
    "transforms": """
x = m.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
expected = (1 - torch.tensor(m.IMAGENET_MEAN)) / torch.tensor(m.IMAGENET_STD)
assert torch.allclose(x[0, :, 0, 0], expected)
assert m.resolve_eval_sizes(224) == (256, 224)
# without fastjpeg: PIL decode + torchvision resize, torchvision's boxes and flips for the same seed
assert m.fastjpeg is None
import torchvision.transforms as T, torchvision.transforms.v2 as T2
from PIL import Image
path = photo_jpeg(400, 300)
img = Image.open(path).convert("RGB")
ref = T2.Compose([T2.PILToTensor(), T2.RandomResizedCrop(64, antialias=True), T2.RandomHorizontalFlip()])
f = m.train_transform(64)
for seed in range(10):
    torch.manual_seed(seed)
    box = m.rrc_params(300, 400)
    torch.manual_seed(seed)
    assert box == tuple(T.RandomResizedCrop.get_params(torch.empty(1, 300, 400), [0.08, 1.0], [3 / 4, 4 / 3]))
    torch.manual_seed(seed)
    x = f(path)
    torch.manual_seed(seed)
    assert x.shape == (3, 64, 64) and torch.equal(x, ref(img)), seed
ref = T2.Compose([T2.PILToTensor(), T2.Resize(73, antialias=True), T2.CenterCrop(64)])
assert torch.equal(m.eval_transform(64)(path), ref(img))
assert m.DEFAULT_CROP_PCT == 0.875 and m.resize_for_crop(288, 0.9) == 320 and m.resize_for_crop(64) == 73
# five crops: torchvision's FiveCrop of the canonically resized image, the centre one the single crop
five = m.eval_crops(path, 73, 64, corners=True)
x = T2.Resize(73, antialias=True)(T2.PILToTensor()(img))
assert torch.equal(five, torch.stack(T2.FiveCrop(64)(x))) and torch.equal(five[4], m.eval_transform(64)(path))
# a 16-bit greyscale image is scaled (round(v * 255 / 65535)), not clipped
import numpy as np
grey16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64))
expected = torch.from_numpy((np.arange(64 * 64) * 16 * 255 + 32767) // 65535).view(64, 64)
assert torch.equal(m.eval_transform(64, resize_size=64)(grey16)[0].long(), expected)
# an extreme aspect ratio: only the kept square is resampled, within 2 levels of the canonical pixels
strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 6, 3), dtype=np.uint8))
ref = T2.Compose([T2.PILToTensor(), T2.Resize(36, antialias=True), T2.CenterCrop(32)])(strip)
assert (m.eval_transform(32, 36)(strip).int() - ref.int()).abs().max() <= 2
""",
    "mixing": """
t = m.one_hot(torch.tensor([1]), 4, smoothing=0.1)
assert torch.allclose(t, torch.tensor([[0.025, 0.925, 0.025, 0.025]]))
x, y = m.Mixer(4, mixup_alpha=1.0)(torch.rand(2, 3, 8, 8), torch.tensor([0, 3]), torch.Generator())
assert torch.allclose(y.sum(1), torch.ones(2)) and torch.allclose(y[0, 0], y[1, 3])
""",
    "losses": """
loss = m.cross_entropy(torch.zeros(2, 4, dtype=torch.bfloat16), torch.tensor([0, 1]))
assert loss.dtype == torch.float32 and abs(loss.item() - math.log(4)) < 1e-6
""",
    "schedule": """
assert abs(m.lr_at(50, base_lr=1.0, total_steps=100) - 0.5) < 1e-12
assert abs(m.scale_lr(0.1, 512) - 0.2) < 1e-12
""",
    "ema": """
model = torch.nn.Linear(2, 1, bias=False)
ema = m.ModelEma(model, decay=0.75)
w0 = model.weight.detach().clone()
with torch.no_grad():
    model.weight.add_(4.0)
ema.update(model, 0)
assert torch.allclose(ema.module.weight, w0 + 1.0)
""",
    "optim": """
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
counts = m.count_param_groups(m.param_groups(model, 0.1))
assert counts["decay"]["tensors"] == 1 and counts["no_decay"]["tensors"] == 3, counts
assert counts["decay"]["elements"] == 12 and counts["no_decay"]["elements"] == 12, counts
""",
    "metrics": """
logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
assert m.topk_correct(logits, torch.tensor([1, 2]), (1, 2)).tolist() == [1, 1]
meter = m.Meter("cpu")
meter.update(torch.tensor(2.0), logits, torch.tensor([1, 2]))
r = meter.compute()
assert r["loss"] == 2.0 and r["top1"] == 50.0 and r["count"] == 2, r
guard = m.NonFiniteGuard("cpu")
for step, loss in enumerate([1.0, float("nan"), float("inf")]):
    guard.update(torch.tensor(loss), step)
try:
    guard.check()
    raise AssertionError("a NaN loss passed the guard")
except m.NonFiniteLoss as e:
    assert e.step == 1, e.step  # the first bad step
""",
    "swa": """
# momentum None: the running statistics are the plain means of the batches' statistics (unbiased variance)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
batches = [torch.randn(4, 3, 2, 2) * (1 + i) + i for i in range(3)]
assert m.recompute_batchnorm(net, batches)
with torch.no_grad():
    feats = [net[0](x) for x in batches]
bn = net[1]
assert torch.allclose(bn.running_mean, torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0), atol=1e-5)
assert torch.allclose(bn.running_var, torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0), atol=1e-4)
def untouchable():
    raise AssertionError("iterated for a model without BatchNorm")
    yield
assert not m.recompute_batchnorm(torch.nn.Linear(2, 2), untouchable())
""",
    "lars": """
w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
w.grad = torch.tensor([0.0, 2.0])
m.LARS([w], lr=0.5, momentum=0.0, weight_decay=0.5, trust_coefficient=0.1).step()
# ratio = 0.1 * 5 / (2 + 0.5 * 5) = 1/9, w -= 0.5 * (g + 0.5 w) / 9
assert torch.allclose(w.detach(), torch.tensor([3 - 1 / 12, 4 - 2 / 9])), w
v = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
v.grad = torch.tensor([1.0, 7.0])
m.LAMB([v], lr=0.1, weight_decay=0.1, eps=0.0).step()
u = torch.tensor([1.3, 1.4])  # Adam's first step sign(g) plus 0.1 w; ratio ||w|| / ||u||
assert torch.allclose(v.detach(), torch.tensor([3.0, 4.0]) - 0.1 * 5 / u.norm() * u), v
""",
    "distill": """
s, t = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]])
assert abs(m.hard_distillation(s, t).item() - math.log(math.exp(2) + 2)) < 1e-6
assert m.soft_distillation(t, t, 2.0).abs() < 1e-6 and m.soft_distillation(s, t, 2.0) > 0
ce = torch.nn.functional.cross_entropy
assert torch.equal(m.distillation_loss((s, t), torch.tensor([0]), t, ce, alpha=0.0), ce(s, torch.tensor([0])))
""",
    "deit": """
model = m.DistilledVisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8,
                                     num_classes=3)
x = torch.randn(2, 3, 32, 32)
cls_logits, dist_logits = model(x)
assert torch.allclose(model.eval()(x), (cls_logits + dist_logits) / 2, atol=1e-6)
assert m.interpolate_pos_embedding(model.encoder.pos_embedding, 3).shape == (1, 2 + 9, 8)
""",
    "efficientnet_lite": """
assert m.round_filters(112, 1.2) == 136 and m.round_repeats(3, 1.4) == 5
assert [round(v * 255) for v in m.LITE_MEAN + m.LITE_STD] == [127] * 3 + [128] * 3
with torch.device("meta"):
    assert sum(p.numel() for p in m.efficientnet_lite("efficientnet_lite0").parameters()) == 4_652_008
conv = m.Conv2dSame(1, 1, 3, 2, bias=False)
torch.nn.init.ones_(conv.weight)
# TensorFlow's SAME on 4 px pads (0, 1): 9 ones in the first window, 4 in the last
assert conv(torch.ones(1, 1, 4, 4)).flatten().tolist() == [9.0, 6.0, 6.0, 4.0]
""",
    "sam": """
w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
w.grad = torch.tensor([3.0, 4.0])
sam = m.SAM([w], rho=0.5)
assert float(sam.ascend()) == 5.0 and torch.allclose(w.detach(), torch.tensor([1.3, 2.4])) and w.grad is None
sam.descend()
assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))
""",
}

# transforms.py with fastjpeg.py copied beside it: it finds and uses it (a JPEG much larger than the crop is
# decoded at reduced size, with the same boxes; without draft, the pixels are still torchvision's).
WITH_FASTJPEG = """
import os
import torchvision.transforms.v2 as T2
from PIL import Image, JpegImagePlugin
assert m.fastjpeg is not None
assert os.path.dirname(m.fastjpeg.__file__) == os.path.dirname(m.__file__), m.fastjpeg.__file__
path = photo_jpeg(1024, 768)
img = Image.open(path).convert("RGB")
ref = T2.Compose([T2.PILToTensor(), T2.RandomResizedCrop(64, antialias=True), T2.RandomHorizontalFlip()])
results, draft = [], JpegImagePlugin.JpegImageFile.draft
def spy(self, mode, size):
    results.append(draft(self, mode, size))
    return results[-1]
JpegImagePlugin.JpegImageFile.draft = spy
try:
    fast, exact, differ = m.train_transform(64), m.train_transform(64, draft=False), 0
    for seed in range(8):
        torch.manual_seed(seed)
        a = fast(path)
        torch.manual_seed(seed)
        b = exact(path)
        torch.manual_seed(seed)
        assert torch.equal(b, ref(img)), seed
        differ += not torch.equal(a, b)
finally:
    JpegImagePlugin.JpegImageFile.draft = draft
assert sum(r is not None for r in results) >= 4 and differ >= 4, (results, differ)
"""

# A JPEG of photo-like content (gradients + noise) in a fresh folder: photo_jpeg(width, height) -> path.
HELPERS = """
def photo_jpeg(width, height):
    import os, tempfile
    import numpy as np
    from PIL import Image
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([128 + 60 * (x / width - y / height) + 30 * np.sin(x / (17 + 5 * c)) for c in range(3)], -1)
    img = img + np.random.default_rng(0).normal(0, 6, img.shape)
    path = os.path.join(tempfile.mkdtemp(), "photo.JPEG")
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path
"""


RUNNER = """
import json, math, os, sys, traceback
sys.modules["imnet"] = None  # the editable install of imnet must not be reachable
import torch
results = {}
for key, name, folder, smoke in json.loads(sys.argv[1]):
    sys.path.insert(0, folder)
    try:
        m = __import__(name)
        assert m.__file__.startswith(folder), m.__file__
        scope = {"m": m, "torch": torch, "math": math}
        exec(sys.argv[2], scope)
        exec(smoke, scope)
        results[key] = "ok"
    except BaseException:
        results[key] = traceback.format_exc()
    finally:
        sys.path.remove(folder)
        inside = os.path.join(folder, "")
        for mod in [k for k, v in sys.modules.items() if (getattr(v, "__file__", None) or "").startswith(inside)]:
            del sys.modules[mod]
print(json.dumps(results))
"""


def _imports(source):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """Copy each module alone into its own empty folder, then import and smoke-test them all in one fresh
    interpreter (one torch import instead of seven: ~5 s instead of ~35 s of CPU on this machine).
    The modules that import torchvision run last so they cannot mask a missing import, transforms last of
    all; then transforms once more, with fastjpeg.py beside it."""
    def order(name):
        source = IMNET / f"{name}.py"
        return name == "transforms", source.exists() and "torchvision" in source.read_text(), name

    jobs = []
    for name in sorted(SMOKE, key=order):
        if (IMNET / f"{name}.py").exists():
            folder = tmp_path_factory.mktemp(f"copy_{name}")
            shutil.copy(IMNET / f"{name}.py", folder / f"{name}.py")
            jobs.append((name, name, str(folder), SMOKE[name]))
    if (IMNET / "transforms.py").exists() and (IMNET / "fastjpeg.py").exists():
        folder = tmp_path_factory.mktemp("copy_transforms_fastjpeg")
        for name in ("transforms", "fastjpeg"):
            shutil.copy(IMNET / f"{name}.py", folder / f"{name}.py")
        jobs.append(("transforms+fastjpeg", "transforms", str(folder), WITH_FASTJPEG))
    with tempfile.TemporaryDirectory() as empty:
        result = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs), HELPERS], cwd=empty,
                                capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# The textbook is what lies at the top of imnet/ (fastjpeg.py is transforms.py's companion, tested below).
TEXTBOOK = sorted(p.stem for p in IMNET.glob("*.py") if p.stem not in ("__init__", "fastjpeg"))


def test_every_textbook_module_has_a_smoke_test():
    assert sorted(SMOKE) == TEXTBOOK


@pytest.mark.parametrize("name", TEXTBOOK)
def test_module_works_alone(name, smoke_results):
    source_file = IMNET / f"{name}.py"
    for module, level in _imports(source_file.read_text()):
        assert level == 0, f"{name}.py has a relative import"
        assert not module.startswith("imnet"), f"{name}.py imports {module}"
        assert module.split(".")[0] in ALLOWED, f"{name}.py imports {module}"
    assert smoke_results[name] == "ok", smoke_results[name]


def test_fastjpeg_is_copyable_with_transforms(smoke_results):
    """fastjpeg.py follows the same import rule (and does not import transforms: no cycle), and a copy of
    transforms.py finds and uses a copy of fastjpeg.py beside it."""
    for module, level in _imports((IMNET / "fastjpeg.py").read_text()):
        assert level == 0, "fastjpeg.py has a relative import"
        assert module.split(".")[0] in ALLOWED and module != "transforms", f"fastjpeg.py imports {module}"
    assert smoke_results["transforms+fastjpeg"] == "ok", smoke_results["transforms+fastjpeg"]
