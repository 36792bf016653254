"""wzzheng/IDML image_retrieval: the IDML-PA training step, in PyTorch (see package doc).

Model (``net/resnet.py``): backbone -> GAP + GMP -> ``embedding`` Linear (Kaiming-normal
fan-out, zero bias) and ``uncertainty`` Linear (PyTorch's default initialisation); with
``is_norm`` both outputs are L2-normalised (x / sqrt(sum x² + 1e-12)). BatchNorm in eval
mode; its weight and bias start with ``requires_grad=False``.

Loss (``losses.py``, Proxy_Anchor): cosine of the normalised inputs and proxies, the squared
distance of the inputs as given to the raw proxies, the uncertainty distance ||V||²,
``cos_I = 1 - (1 - cos) exp(-(d_var + 4) / (5 d_mu))``, then Proxy-Anchor (mrg 0.1, alpha 32).

Training (``train.py``): groups [everything but the semantic embedding] at lr, [semantic
embedding] at lr, [proxies] at 100 lr; AdamW(weight_decay); StepLR per epoch; for ``warm``
epochs every parameter outside the embedding and the loss has ``requires_grad=False``, and
at epoch ``warm`` all of them (BatchNorm's too) get ``requires_grad=True``; each step:
loss(x) + lam loss(x~, y) + (1 - lam) loss(x~, y[perm]), backward, clip_grad_value_ 10 on the
model and on the proxies, step.
"""

import torch
from torch import nn
from torch.nn import functional as F


def l2_norm(x):
  return x / torch.sqrt(torch.sum(x * x, dim=1, keepdim=True) + 1e-12)


class Model(nn.Module):
  def __init__(self, backbone: nn.Module, num_features: int, embedding_size: int,
               is_norm: bool = True):
    super().__init__()
    self.model = backbone
    self.is_norm = is_norm
    self.model.embedding = nn.Linear(num_features, embedding_size)
    self.model.uncertainty = nn.Linear(num_features, embedding_size)
    nn.init.kaiming_normal_(self.model.embedding.weight, mode="fan_out")
    nn.init.constant_(self.model.embedding.bias, 0)
    for m in self.model.modules():  # bn_freeze
      if isinstance(m, nn.BatchNorm2d):
        m.eval()
        m.weight.requires_grad_(False)
        m.bias.requires_grad_(False)

  def forward(self, x):
    f = self.model.features(x)
    h = F.adaptive_avg_pool2d(f, 1).flatten(1) + F.adaptive_max_pool2d(f, 1).flatten(1)
    mu, u = self.model.embedding(h), self.model.uncertainty(h)
    if self.is_norm:
      mu, u = l2_norm(mu), l2_norm(u)
    return mu, u


class ProxyAnchor(nn.Module):
  def __init__(self, num_classes: int, embedding_size: int, mrg: float = 0.1,
               alpha: float = 32.0):
    super().__init__()
    self.proxies = nn.Parameter(torch.randn(num_classes, embedding_size))
    nn.init.kaiming_normal_(self.proxies, mode="fan_out")
    self.num_classes, self.mrg, self.alpha = num_classes, mrg, alpha

  def forward(self, x, v, labels):
    p = self.proxies
    cos_ori = F.linear(l2_norm(x), l2_norm(p))
    d_mu = (x * x).sum(1, keepdim=True) + (p * p).sum(1)[None, :] - 2 * x @ p.t()
    d_var = (v * v).sum(1, keepdim=True)  # The proxies' uncertainty is zero.
    cos = 1 - (1 - cos_ori) * torch.exp(-(d_var + 4) / (5 * d_mu))
    pos = F.one_hot(labels, self.num_classes).float()
    pos_exp = torch.exp(-self.alpha * (cos - self.mrg))
    neg_exp = torch.exp(self.alpha * (cos + self.mrg))
    with_pos = (pos.sum(0) != 0).nonzero().squeeze(1)
    p_sum = torch.where(pos == 1, pos_exp, torch.zeros_like(pos_exp)).sum(0)
    n_sum = torch.where(pos == 0, neg_exp, torch.zeros_like(neg_exp)).sum(0)
    return (torch.log(1 + p_sum).sum() / len(with_pos)
            + torch.log(1 + n_sum).sum() / self.num_classes)


class Trainer:
  """The official optimiser set-up and training step, one step at a time."""

  def __init__(self, model: Model, criterion: ProxyAnchor, lr: float, weight_decay: float,
               decay_step: int, gamma: float, warm: int, steps_per_epoch: int,
               proxy_mult: float = 100.0, clip: float = 10.0):
    self.model, self.criterion, self.warm = model, criterion, warm
    self.steps_per_epoch, self.clip, self.step_count = steps_per_epoch, clip, 0
    embedding = set(model.model.embedding.parameters())
    groups = [{"params": [p for p in model.parameters() if p not in embedding]},
              {"params": list(model.model.embedding.parameters()), "lr": lr},
              {"params": [criterion.proxies], "lr": lr * proxy_mult}]
    self.opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=decay_step, gamma=gamma)
    self.unfrozen = embedding | set(criterion.parameters())

  def _start_epoch(self, epoch: int) -> None:
    if self.warm > 0 and epoch in (0, self.warm):
      for p in set(self.model.parameters()) - self.unfrozen:
        p.requires_grad_(epoch == self.warm)

  def step(self, x, y, lam: float, perm):
    """One training step with Mixup's ``lam`` and ``perm`` given; returns the loss."""
    epoch = self.step_count // self.steps_per_epoch
    if self.step_count % self.steps_per_epoch == 0:
      self._start_epoch(epoch)
    mixed = lam * x + (1 - lam) * x[perm]
    m, v = self.model(x)
    mixed_m, mixed_v = self.model(mixed)
    loss = (self.criterion(m, v, y) + lam * self.criterion(mixed_m, mixed_v, y)
            + (1 - lam) * self.criterion(mixed_m, mixed_v, y[perm]))
    self.opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(self.model.parameters(), self.clip)
    torch.nn.utils.clip_grad_value_(self.criterion.parameters(), self.clip)
    self.opt.step()
    self.step_count += 1
    if self.step_count % self.steps_per_epoch == 0:
      self.sched.step()
    return float(loss.detach())
