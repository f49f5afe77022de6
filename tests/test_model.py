import torch

from drolt.model import resnet32


def test_resnet32_has_about_046m_parameters_for_cifar10():
    n = sum(p.numel() for p in resnet32(10).parameters())
    assert 0.45e6 < n < 0.47e6


def test_forward_returns_nonnegative_64d_features_and_logits():
    model = resnet32(100).eval()
    z, logits = model(torch.randn(4, 3, 32, 32))
    assert z.shape == (4, 64) and logits.shape == (4, 100)
    assert (z >= 0).all()  # post-ReLU pooled features
    assert torch.allclose(logits, model.fc(z))


def test_shortcuts_add_no_parameters_and_downsample_to_8x8():
    model = resnet32(10)
    assert not any("shortcut" in name or "downsample" in name for name, _ in model.named_parameters())
    out = model.layers(torch.relu(model.bn1(model.conv1(torch.randn(2, 3, 32, 32)))))
    assert out.shape == (2, 64, 8, 8)


def test_cosine_head_gives_logits_bounded_by_one_and_unit_columns():
    model = resnet32(10, cosine_head=True).eval()
    assert torch.allclose(model.fc.weight.norm(dim=0), torch.ones(10), atol=1e-6)
    _, logits = model(torch.randn(3, 3, 32, 32))
    assert logits.abs().max() <= 1 + 1e-6
