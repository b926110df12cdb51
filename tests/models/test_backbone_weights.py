"""Backbones of coavs's own model load the weight files their libraries publish, the way those libraries load
them: timm through ``pretrained_cfg_overlay=dict(file=...)`` (its own filters, before ``features_only`` renames
``stages.0`` to ``stages_0``), torchvision's ResNet-50 through its state dict. Random weights in those formats,
small architecture arguments where timm takes them, so each test runs in about a second."""

from __future__ import annotations

import pytest
import torch

from coavs.errors import UserError
from coavs.models import ModelConfig, build_backbone, build_model
from tests.support.released import write_timm_weights, write_torchvision_weights

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'coavs[backbones]')")

# (timm name, architecture arguments that keep the test small, input side)
TIMM_FAMILIES = {
    "swin_b": ("swin_base_patch4_window12_384", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                                                    img_size=96, window_size=3), 96),
    "pvt_v2_b5": ("pvt_v2_b5", dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), 64),
    "convnext": ("convnext_base", dict(dims=(8, 16, 24, 32), depths=(1, 1, 1, 1)), 64),
    "resnet50": ("resnet50", dict(layers=(1, 1, 1, 1)), 64),
}


@pytest.mark.parametrize("family", sorted(TIMM_FAMILIES))
def test_timm_backbone_loads_the_published_state_dict(family, tmp_path):
    name, kwargs, side = TIMM_FAMILIES[family]
    path = write_timm_weights(tmp_path / f"{name}.pth", name, **kwargs)
    published = torch.load(path, weights_only=True)
    torch.manual_seed(123)  # a different random init: the weights must come from the file
    backbone = build_backbone(f"timm:{name}", weights=str(path), kwargs=kwargs)
    loaded = backbone.model.state_dict()
    matched = 0
    for key, value in loaded.items():
        original = key.replace("stages_", "stages.").replace("layers_", "layers.").replace("stem_", "stem.")
        if original in published:
            assert torch.equal(value, published[original]), key
            matched += 1
    assert matched >= 0.9 * len(loaded)  # everything but the keys timm's own filter renames
    feats = backbone(torch.randn(1, 3, side, side))
    assert len(feats) == 4 and [f.shape[1] for f in feats] == backbone.out_channels


def test_timm_features_only_renaming_is_what_broke_plain_loading(tmp_path):
    """The state dict timm publishes does not load into the features_only model by name (the old path); timm's
    own mechanism does."""
    name, kwargs, _ = TIMM_FAMILIES["convnext"]
    path = write_timm_weights(tmp_path / "convnext.pth", name, **kwargs)
    features = timm.create_model(name, features_only=True, **kwargs)
    missing = features.load_state_dict(torch.load(path, weights_only=True), strict=False).missing_keys
    assert any(k.startswith("stages_") for k in missing)
    build_backbone(f"timm:{name}", weights=str(path), kwargs=kwargs)


def test_torchvision_resnet50_loads_its_state_dict(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = write_torchvision_weights(tmp_path / "resnet50-0676ba61.pth")
    torch.manual_seed(7)
    backbone = build_backbone("torchvision:resnet50", weights=str(path))
    reference = torchvision.models.resnet50()
    reference.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(backbone.layers[3][2].conv3.weight, reference.layer4[2].conv3.weight)
    assert backbone.out_channels == [256, 512, 1024, 2048]


def test_wrong_or_missing_weight_files_are_one_line(tmp_path):
    with pytest.raises(UserError, match="backbone weights file not found: .*none.pth"):
        build_backbone("timm:resnet50", weights=str(tmp_path / "none.pth"))
    name, kwargs, _ = TIMM_FAMILIES["convnext"]
    other = write_timm_weights(tmp_path / "r50.pth", "resnet50", layers=(1, 1, 1, 1))
    with pytest.raises(UserError, match="do not fit timm:convnext_base") as info:
        build_backbone(f"timm:{name}", weights=str(other), kwargs=kwargs)
    assert "\n" not in str(info.value)
    pytest.importorskip("torchvision")
    with pytest.raises(UserError, match="do not fit the model"):
        build_backbone("torchvision:resnet50", weights=str(other))


def test_own_model_with_a_pretrained_timm_backbone(tmp_path):
    name, kwargs, _ = TIMM_FAMILIES["pvt_v2_b5"]
    path = write_timm_weights(tmp_path / "pvt.pth", name, **kwargs)
    config = ModelConfig.small(backbone=f"timm:{name}", backbone_weights=str(path), backbone_kwargs=kwargs,
                               num_clusters=0)
    model = build_model(config)
    out = model(torch.rand(2, 3, 64, 64), torch.randn(2, 1, 96, 64) if config.audio_input == "logmel"
                else torch.randn(2, 128))
    assert out["pred_masks"].shape[:2] == (2, config.queries)
    # a run's checkpoint holds the weights: load_model builds without the file
    path.unlink()
    build_model(config, pretrained=False).load_state_dict(model.state_dict())
