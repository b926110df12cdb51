"""Image backbones: frames ``[N,3,H,W]`` → four feature maps at strides 4, 8, 16, 32.

``small_cnn`` (default) is trained from scratch. ``timm:<name>`` and ``torchvision:<resnet name>`` build those
libraries' models when they are installed (``pip install 'coavs[backbones]'``), **without downloading anything**:
pretrained weights come from a local file (``ModelConfig.backbone_weights``) in the library's own public format,
loaded the way the library loads it:

- timm: ``timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=PATH))``,
  so timm applies its own checkpoint filter (e.g. the original Swin or PVT-v2 release's key names) to the
  classification model's state dict *before* ``features_only`` renames the stages (``stages.0`` → ``stages_0``);
  a file that does not fit is timm's strict-load error, in one line. Tested families: Swin-B
  (``swin_base_patch4_window12_384``), PVT-v2-B5 (``pvt_v2_b5``), ConvNeXt (``convnext_base``), ResNet-50.
- torchvision: the ResNet's full state dict (``resnet50-*.pth`` as torchvision publishes it, ``fc`` included)
  through ``load_state_dict`` (strict), the only local-file loading torchvision has.

``ModelConfig.backbone_kwargs`` passes extra keyword arguments to ``timm.create_model`` (e.g. ``img_size: 384`` for a
Swin trained at another resolution).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor, nn

from coavs.errors import UserError
from coavs.models.audio import _groups


def _conv_block(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(_groups(out_ch), out_ch), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four stages of conv3x3–GroupNorm–ReLU blocks at strides 4, 8, 16, 32: the first stage is a stride-2 stem
    block plus two blocks (the first of them stride 2), every later stage a stride-2 block plus one block."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        self.out_channels = list(widths)
        stem = widths[0] // 2 or 1
        self.stages = nn.ModuleList()
        in_ch = widths[0]
        for i, width in enumerate(widths):
            if i == 0:
                stage = nn.Sequential(_conv_block(3, stem, 2), _conv_block(stem, width, 2),
                                      _conv_block(width, width, 1))
            else:
                stage = nn.Sequential(_conv_block(in_ch, width, 2), _conv_block(width, width, 1))
            self.stages.append(stage)
            in_ch = width

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class TimmBackbone(nn.Module):
    """A timm model with ``features_only=True`` and its last four feature levels (NCHW)."""

    def __init__(self, name: str, weights: str | None, kwargs: dict | None = None):
        super().__init__()
        import timm

        options = dict(kwargs or {})
        if weights:
            _check_file(weights)
            options.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
        try:
            self.model = timm.create_model(name, features_only=True, **options)
        except (RuntimeError, KeyError, ValueError) as exc:  # timm's strict load or its checkpoint filter
            if not weights:
                raise
            raise UserError(f"backbone weights {weights} do not fit timm:{name}: {_first_line(exc)}") from None
        info = self.model.feature_info
        self.indices = list(range(len(info.channels())))[-4:]
        self.out_channels = [info.channels()[i] for i in self.indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.model(x)
        out = []
        for i, channels in zip(self.indices, self.out_channels):
            f = feats[i]
            if f.shape[1] != channels and f.shape[-1] == channels:  # some transformers return NHWC
                f = f.permute(0, 3, 1, 2)
            out.append(f.contiguous())
        return out


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet-family model (resnet*, resnext*, wide_resnet*): ``layer1 … layer4``."""

    def __init__(self, name: str, weights: str | None):
        super().__init__()
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        if weights:
            _load_weights(model, weights)
        if not all(hasattr(model, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer4")):
            raise ValueError(f"torchvision backbone {name!r} is not ResNet-like; supported: resnet*, resnext*, "
                             "wide_resnet* (or use a timm backbone)")
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        self.layers = nn.ModuleList([model.layer1, model.layer2, model.layer3, model.layer4])
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, 64, 64))
        self.out_channels = [f.shape[1] for f in probe]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"backbone weights file not found: {path} (ModelConfig.backbone_weights; nothing is "
                        "downloaded)")


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) <= 300 else text[:297] + "..."


def _load_weights(module: nn.Module, path: str) -> None:
    """torchvision's way: the model's own state dict (``{"state_dict": …}`` wrappers accepted), strictly."""
    _check_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals, truncated files
        raise UserError(f"backbone weights {path} are not a readable state dict: {_first_line(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"backbone weights {path} hold a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"backbone weights {path} do not fit the model: {_first_line(exc)}") from None


def build_backbone(name: str, widths: tuple[int, ...] = (64, 128, 256, 512), weights: str | None = None,
                   kwargs: dict | None = None) -> nn.Module:
    """``small_cnn`` | ``timm:<name>`` | ``torchvision:<resnet name>`` → module with ``out_channels`` (4 ints).
    ``kwargs``: extra ``timm.create_model`` arguments (timm only)."""
    if name == "small_cnn":
        if weights:
            raise ValueError("backbone_weights is for timm/torchvision backbones; small_cnn trains from scratch")
        return SmallCNN(widths)
    library, _, model_name = name.partition(":")
    if library in ("timm", "torchvision") and model_name:
        if importlib.util.find_spec(library) is None:
            raise ImportError(f"backbone {name!r} needs {library}, which is not installed "
                              f"(pip install 'coavs[backbones]'); or use backbone='small_cnn'")
        if kwargs and library != "timm":
            raise ValueError("backbone_kwargs are passed to timm.create_model; torchvision backbones take none")
        return TimmBackbone(model_name, weights, kwargs) if library == "timm" else TorchvisionResNet(model_name,
                                                                                                     weights)
    raise ValueError(f"backbone must be 'small_cnn', 'timm:<name>' or 'torchvision:<name>', got {name!r}")
