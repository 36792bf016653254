"""Plain-torch reference networks with the published layer names (no torchvision needed).

ResNet and GoogLeNet follow torchvision's module names; BN-Inception follows Cadene's
``pretrainedmodels`` file. Written independently of idml_jax's Flax models.
"""

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inp, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inp, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """torchvision's ResNet (``width`` 64), narrower for tests; ``small_images``: the CIFAR
  stem (one 3×3/1 conv, no max pool)."""

  def __init__(self, block, layers, width=64, small_images=False):
    super().__init__()
    kernel, stride = (3, 1) if small_images else (7, 2)
    self.conv1 = nn.Conv2d(3, width, kernel, stride, kernel // 2, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.Identity() if small_images else nn.MaxPool2d(3, 2, 1)
    self.inp = width
    for i, n in enumerate(layers):
      setattr(self, f"layer{i + 1}", self._layer(block, width * 2**i, n, 1 if i == 0 else 2))
    self.num_features = width * 8 * block.expansion
    self.fc = nn.Linear(self.num_features, 1000)

  def _layer(self, block, planes, n, stride):
    down = None
    if stride != 1 or self.inp != planes * block.expansion:
      down = nn.Sequential(nn.Conv2d(self.inp, planes * block.expansion, 1, stride, bias=False),
                           nn.BatchNorm2d(planes * block.expansion))
    blocks = [block(self.inp, planes, stride, down)]
    self.inp = planes * block.expansion
    blocks += [block(self.inp, planes) for _ in range(1, n)]
    return nn.Sequential(*blocks)

  def features(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet18():
  return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet_tiny(small_images=False):
  """idml_jax's ``resnet_tiny``: one BasicBlock per stage, width 8."""
  return ResNet(BasicBlock, [1, 1, 1, 1], width=8, small_images=small_images)


class _ConvBlock(nn.Module):
  def __init__(self, inp, width):
    super().__init__()
    self.conv1 = nn.Conv2d(inp, width, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)

  def forward(self, x):
    return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
  """Blocks of two (3×3 conv without bias, BatchNorm, ReLU), a 2×2 max-pool between blocks:
  the plain CNN of issue 22, written as a PyTorch user would (``block1.conv1``, ...)."""

  def __init__(self, widths=(8, 16, 32)):
    super().__init__()
    inp = 3
    for i, width in enumerate(widths):
      setattr(self, f"block{i + 1}", _ConvBlock(inp, width))
      inp = width
    self.num_blocks, self.num_features = len(widths), widths[-1]

  def features(self, x):
    for i in range(self.num_blocks):
      x = getattr(self, f"block{i + 1}")(F.max_pool2d(x, 2, 2) if i else x)
    return x


def resnet50():
  return ResNet(Bottleneck, [3, 4, 6, 3])


class BasicConv2d(nn.Module):
  def __init__(self, inp, out, **kw):
    super().__init__()
    self.conv = nn.Conv2d(inp, out, bias=False, **kw)
    self.bn = nn.BatchNorm2d(out, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
  def __init__(self, inp, c1, c3r, c3, c5r, c5, pp):
    super().__init__()
    self.branch1 = BasicConv2d(inp, c1, kernel_size=1)
    self.branch2 = nn.Sequential(BasicConv2d(inp, c3r, kernel_size=1),
                                 BasicConv2d(c3r, c3, kernel_size=3, padding=1))
    self.branch3 = nn.Sequential(BasicConv2d(inp, c5r, kernel_size=1),
                                 BasicConv2d(c5r, c5, kernel_size=3, padding=1))
    self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                 BasicConv2d(inp, pp, kernel_size=1))

  def forward(self, x):
    return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
    self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
    self.conv2 = BasicConv2d(64, 64, kernel_size=1)
    self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
    self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
    self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
    self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
    self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
    self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
    self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
    self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
    self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
    self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
    self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
    self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
    self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
    self.fc = nn.Linear(1024, 1000)

  def features(self, x):
    # transform_input=True, as torchvision sets for the pretrained weights.
    x = torch.cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                   x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                   x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)
    x = self.maxpool1(self.conv1(x))
    x = self.maxpool2(self.conv3(self.conv2(x)))
    x = self.maxpool3(self.inception3b(self.inception3a(x)))
    for n in "abcde":
      x = getattr(self, f"inception4{n}")(x)
    x = self.maxpool4(x)
    return self.inception5b(self.inception5a(x))


# Cadene's BN-Inception: (name, inputs, 1x1, 3x3r, 3x3, d3x3r, d3x3, pool_proj, pool kind).
BNI = [("3a", 192, 64, 64, 64, 64, 96, 32, "avg"), ("3b", 256, 64, 64, 96, 64, 96, 64, "avg"),
       ("3c", 320, 0, 128, 160, 64, 96, 0, "max2"), ("4a", 576, 224, 64, 96, 96, 128, 128, "avg"),
       ("4b", 576, 192, 96, 128, 96, 128, 128, "avg"),
       ("4c", 576, 160, 128, 160, 128, 160, 128, "avg"),
       ("4d", 608, 96, 128, 192, 160, 192, 128, "avg"),
       ("4e", 608, 0, 128, 192, 192, 256, 0, "max2"),
       ("5a", 1056, 352, 192, 320, 160, 224, 128, "avg"),
       ("5b", 1024, 352, 192, 320, 192, 224, 128, "max1")]


class BNInception(nn.Module):
  def __init__(self):
    super().__init__()
    self.units = []

    def unit(name, inp, out, k, s=1):
      setattr(self, name, nn.Conv2d(inp, out, k, s, k // 2))
      setattr(self, name + "_bn", nn.BatchNorm2d(out, eps=1e-5, momentum=0.9))

    unit("conv1_7x7_s2", 3, 64, 7, 2)
    unit("conv2_3x3_reduce", 64, 64, 1)
    unit("conv2_3x3", 64, 192, 3)
    for name, inp, c1, c3r, c3, cdr, cd, cp, pool in BNI:
      p = f"inception_{name}"
      s = 2 if pool == "max2" else 1
      if c1:
        unit(f"{p}_1x1", inp, c1, 1)
      unit(f"{p}_3x3_reduce", inp, c3r, 1)
      unit(f"{p}_3x3", c3r, c3, 3, s)
      unit(f"{p}_double_3x3_reduce", inp, cdr, 1)
      unit(f"{p}_double_3x3_1", cdr, cd, 3)
      unit(f"{p}_double_3x3_2", cd, cd, 3, s)
      if cp:
        unit(f"{p}_pool_proj", inp, cp, 1)
    self.last_linear = nn.Linear(1024, 1000)

  def _u(self, name, x):
    return F.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

  def features(self, x):
    x = F.max_pool2d(self._u("conv1_7x7_s2", x), 3, 2, ceil_mode=True)
    x = self._u("conv2_3x3", self._u("conv2_3x3_reduce", x))
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    for name, _, c1, _, _, _, _, _, pool in BNI:
      p = f"inception_{name}"
      outs = [self._u(f"{p}_1x1", x)] if c1 else []
      outs.append(self._u(f"{p}_3x3", self._u(f"{p}_3x3_reduce", x)))
      d = self._u(f"{p}_double_3x3_1", self._u(f"{p}_double_3x3_reduce", x))
      outs.append(self._u(f"{p}_double_3x3_2", d))
      if pool == "max2":
        outs.append(F.max_pool2d(x, 3, 2, ceil_mode=True))
      elif pool == "avg":
        pooled = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
        outs.append(self._u(f"{p}_pool_proj", pooled))
      else:
        outs.append(self._u(f"{p}_pool_proj", F.max_pool2d(x, 3, 1, 1, ceil_mode=True)))
      x = torch.cat(outs, 1)
    return x


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> None:
  """Non-trivial BN statistics and affine parameters, so conversion errors show."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
      m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
      m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
      m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
