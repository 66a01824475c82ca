"""DeiT with a distillation token: shapes, eval fusion, initialisation, strict state_dict round trip, the
position-embedding interpolation, and one training step."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from imnet.deit import DEIT_DISTILLED, DistilledVisionTransformer, deit_distilled, interpolate_pos_embedding
from imnet.distill import distillation_loss
from imnet.losses import cross_entropy


def _tiny(image_size=32, num_classes=5):
    torch.manual_seed(0)
    return DistilledVisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2,
                                      hidden_dim=16, num_classes=num_classes)


def test_shapes_and_eval_fusion():
    model = _tiny()
    assert isinstance(model, VisionTransformer)
    assert model.encoder.pos_embedding.shape == (1, 2 + 16, 16) and model.seq_length == 18
    x = torch.randn(3, 3, 32, 32)
    cls_logits, dist_logits = model.train()(x)
    assert cls_logits.shape == dist_logits.shape == (3, 5)
    assert not torch.allclose(cls_logits, dist_logits)  # two tokens, two heads
    model.eval()
    with torch.no_grad():
        fused = model(x)
        # the same forward written out: tokens [class, dist, patches] + position embedding, encoder, heads
        tokens = model._process_input(x)
        tokens = torch.cat([model.class_token.expand(3, -1, -1), model.dist_token.expand(3, -1, -1), tokens], 1)
        z = model.encoder(tokens)
        cls_logits, dist_logits = model.heads(z[:, 0]), model.head_dist(z[:, 1])
    torch.testing.assert_close(fused, (cls_logits + dist_logits) / 2)


@pytest.mark.parametrize("name", sorted(DEIT_DISTILLED))
def test_deit_widths(name):
    with torch.device("meta"):
        model = deit_distilled(name, num_classes=1000)
    width, heads = DEIT_DISTILLED[name]
    assert (model.hidden_dim, model.mlp_dim, len(model.encoder.layers), model.patch_size) == (width, 4 * width, 12, 16)
    assert model.encoder.layers[0].self_attention.num_heads == heads
    assert model.encoder.pos_embedding.shape == (1, 14 * 14 + 2, width)
    assert model.head_dist.weight.shape == (1000, width)
    # DeiT's parameter counts (README: 6M, 22M, 87M for tiny / small / base distilled)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(millions) == {"deit_tiny_distilled": 6, "deit_small_distilled": 22, "deit_base_distilled": 87}[name]
    with pytest.raises(ValueError, match="unknown DeiT"):
        deit_distilled("deit_huge_distilled")


def test_initialisation_is_deits():
    torch.manual_seed(0)
    model = DistilledVisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=3, hidden_dim=192,
                                       num_classes=100)
    for p in (model.class_token, model.dist_token, model.encoder.pos_embedding, model.heads.head.weight,
              model.head_dist.weight, model.encoder.layers[0].self_attention.in_proj_weight,
              model.encoder.layers[0].mlp[0].weight):
        assert abs(p.std().item() - 0.02) < 0.004 and p.abs().max() < 0.2, p.shape  # 192+ samples: +-10%
    for b in (model.heads.head.bias, model.head_dist.bias, model.encoder.layers[0].mlp[0].bias,
              model.encoder.layers[0].self_attention.in_proj_bias):
        assert torch.equal(b, torch.zeros_like(b))
    # the patch embedding keeps PyTorch's Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in 768
    bound = 1 / 768 ** 0.5
    w = model.conv_proj.weight
    assert w.abs().max() <= bound and abs(w.std().item() - bound / 3 ** 0.5) < 0.05 * bound
    assert not torch.equal(model.class_token, model.dist_token)


def test_state_dict_loads_strictly_into_a_fresh_instance():
    model = _tiny()
    state = model.state_dict()
    assert {"class_token", "dist_token", "encoder.pos_embedding", "heads.head.weight", "head_dist.weight"} <= set(state)
    fresh = DistilledVisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                       num_classes=5)
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_interpolation_keeps_tokens_and_equals_f_interpolate():
    model = _tiny(image_size=32)  # 4 x 4 grid
    pos = model.encoder.pos_embedding.detach()
    new = interpolate_pos_embedding(pos, 6)
    assert new.shape == (1, 2 + 36, 16)
    assert torch.equal(new[:, :2], pos[:, :2])  # class and distillation rows unchanged
    grid = pos[0, 2:].reshape(4, 4, 16).permute(2, 0, 1).unsqueeze(0)  # (1, D, 4, 4)
    by_hand = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(36, 16)
    assert torch.equal(new[0, 2:], by_hand)
    # the resized embedding loads into a model built at 48 px and runs
    state = model.state_dict()
    state["encoder.pos_embedding"] = new
    bigger = _tiny(image_size=48)
    bigger.load_state_dict(state, strict=True)
    assert bigger.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 5)
    # the same size is the identity (bicubic at scale 1 samples the grid points)
    torch.testing.assert_close(interpolate_pos_embedding(pos, 4), pos)
    with pytest.raises(ValueError, match="position embedding of shape"):
        interpolate_pos_embedding(pos[:, 1:], 6)  # 17 rows: not 2 + g*g


def test_one_training_step_with_distillation():
    model = _tiny().train()
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 5))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = distillation_loss(model(x), y, teacher_logits, cross_entropy, kind="hard", alpha=0.5)
    loss.backward()
    # the distillation token and head get gradients from the distillation term
    assert model.dist_token.grad.abs().sum() > 0 and model.head_dist.weight.grad.abs().sum() > 0
    opt.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters()), "every parameter moves"
    assert torch.isfinite(loss)
