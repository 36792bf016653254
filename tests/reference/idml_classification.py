"""wzzheng/IDML image_classification: the ISM classifier's training step, in PyTorch.

Model (``resnet.py``, ImageNet branch): backbone -> average pool -> ``fc`` (with bias,
PyTorch's default initialisation) for the logits, and ``uncertainty`` = relu(Linear) (default
initialisation). In training the logits are the ISM against the proxies ``fc(I)`` (row c:
the weight of class c plus its bias), ``x = 1 - (1 - fc(h)) exp(-||u||² / (5 ||h - p_c||²))``;
at test the plain ``fc(h)``.

Step (``train.py``): CutMix when ``r < cutmix_prob`` (the box pasted from the permuted batch,
lam corrected to its area), ``CE(out, y) lam + CE(out, y[perm]) (1 - lam)``; SGD with
Nesterov momentum and L2 weight decay; ``adjust_learning_rate`` per epoch. The ImageNet
transforms' ``ColorJitter`` (brightness, contrast, saturation in a random order) and
``Lighting`` (PCA noise) act on [0, 1] tensors before normalisation (``utils.py``).
"""

import torch
from torch import nn
from torch.nn import functional as F

EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])
ORDERS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


def _gray(img):
  g = img.clone()
  g[0] = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
  g[1].copy_(g[0])
  g[2].copy_(g[0])
  return g


def color_jitter_and_lighting(img, alphas, order: int, light):
  """One [3, H, W] image in [0, 1]: the shuffled lerps, then the PCA lighting."""
  for t in ORDERS[order]:
    if t == 0:  # Brightness.
      target = torch.zeros_like(img)
    elif t == 1:  # Contrast.
      target = _gray(img).fill_(_gray(img).mean())
    else:  # Saturation.
      target = _gray(img)
    img = img.lerp(target, float(alphas[t]))
  rgb = (EIGVEC * light.view(1, 3) * EIGVAL.view(1, 3)).sum(1)
  return img + rgb.view(3, 1, 1)


class Classifier(nn.Module):
  def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
               uncertainty_dim: int):
    super().__init__()
    self.backbone = backbone
    self.fc = nn.Linear(num_features, num_classes)
    self.uncertainty = nn.Linear(num_features, uncertainty_dim)

  def forward(self, x, train: bool = True):
    h = F.adaptive_avg_pool2d(self.backbone.features(x), 1).flatten(1)
    if not train:
      return self.fc(h)
    u = F.relu(self.uncertainty(h))
    p = self.fc(torch.eye(h.shape[1])).t()  # [C, F]: weight row + bias.
    d = (h * h).sum(1, keepdim=True) + (p * p).sum(1)[None, :] - 2 * h @ p.t()
    return 1 - (1 - self.fc(h)) * torch.exp(-(u * u).sum(1, keepdim=True) / (5 * d))


class Trainer:
  def __init__(self, model: Classifier, lr: float, momentum: float, weight_decay: float,
               lr_at_epoch, steps_per_epoch: int):
    self.model, self.lr_at_epoch, self.steps_per_epoch = model, lr_at_epoch, steps_per_epoch
    self.opt = torch.optim.SGD(model.parameters(), lr, momentum=momentum,
                               weight_decay=weight_decay, nesterov=True)
    self.step_count = 0

  def step(self, x, y, lam: float, perm, box, apply: bool):
    if self.step_count % self.steps_per_epoch == 0:
      for g in self.opt.param_groups:
        g["lr"] = self.lr_at_epoch(self.step_count // self.steps_per_epoch)
    if apply:
      y1, y2, x1, x2 = box
      x = x.clone()
      x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
      lam = 1 - (y2 - y1) * (x2 - x1) / (x.shape[-1] * x.shape[-2])
      out = self.model(x)
      loss = F.cross_entropy(out, y) * lam + F.cross_entropy(out, y[perm]) * (1.0 - lam)
    else:
      loss = F.cross_entropy(self.model(x), y)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    self.step_count += 1
    return float(loss.detach())
