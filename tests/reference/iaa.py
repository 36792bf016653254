"""darkpromise98/IAA: the training step and the class estimator, in PyTorch (package doc).

Model (``model/embedding.py``): backbone features (ResNet: GMP + GAP) -> one Linear
(Kaiming-normal fan-out, zero bias). BatchNorm in eval mode (``fix_batchnorm``), its weight
and bias trained. One Adam group with L2 weight decay, MultiStepLR stepped after each epoch.

Estimator (``intra.py``): ``update_diag`` (datasets of <= 1000 classes: every class present
is merged) and ``update_each_class`` (more classes: classes with one image keep their
estimate but count); ``global_update`` at the start of epoch ``ep`` (counted from 1) when
``ep > start_epoch`` and ``(ep - start_epoch - 1) % M == 0``. Synthesis from epoch
``start_epoch + 1``: ``intra_synthetsis`` takes the square root of the class covariance again
for every copy (copy m uses Sigma^(1/2^m)); ``lamda_epoch`` with epochs counted from 1.
Losses (``losses.py``): anchors are the first B rows, the positives of anchor i exclude every
row j with j mod B = i.
"""

import torch
from torch import nn
from torch.nn import functional as F


class Embedding(nn.Module):
  def __init__(self, backbone: nn.Module, num_features: int, embedding_size: int):
    super().__init__()
    self.base = backbone
    self.linear = nn.Linear(num_features, embedding_size)
    nn.init.kaiming_normal_(self.linear.weight, a=0, mode="fan_out")
    nn.init.constant_(self.linear.bias, 0.0)
    for m in self.modules():  # fix_batchnorm
      if isinstance(m, nn.BatchNorm2d):
        m.eval()

  def forward(self, x):
    f = self.base.features(x)
    h = F.adaptive_avg_pool2d(f, 1).flatten(1) + F.adaptive_max_pool2d(f, 1).flatten(1)
    return self.linear(h)


class Estimator:
  """Per-class mean, diagonal covariance and count (``Estimate_Covariance``)."""

  def __init__(self, num_classes: int, dim: int, momentum: float = 0.2):
    self.num_classes, self.momentum = num_classes, momentum
    self.mean = torch.zeros(num_classes, dim)
    self.covariance = torch.zeros(num_classes, dim)
    self.amount = torch.zeros(num_classes)

  def update_diag(self, features, labels):
    n, c, a = features.shape[0], self.num_classes, features.shape[1]
    onehot = torch.zeros(n, c).scatter_(1, labels.view(-1, 1), 1)
    by_class = features.view(n, 1, a).expand(n, c, a) * onehot.view(n, c, 1)
    amount = onehot.view(n, c, 1).expand(n, c, a).sum(0)
    amount[amount == 0] = 1
    ave = by_class.sum(0) / amount
    var = (by_class - ave.expand(n, c, a) * onehot.view(n, c, 1)).pow(2).sum(0) / amount
    counts = onehot.sum(0).view(c, 1).expand(c, a)
    w = counts / (counts + self.amount.view(c, 1).expand(c, a))
    w[w != w] = 0
    w = torch.clamp(w, min=1 - self.momentum) * (w > 0).float()
    self.covariance = (self.covariance * (1 - w) + var * w
                       + w * (1 - w) * (self.mean - ave).pow(2))
    self.mean = self.mean * (1 - w) + ave * w
    self.amount += onehot.sum(0)

  def update_each_class(self, features, labels):
    classes, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True,
                                            return_counts=True)
    for i, k in enumerate(classes.tolist()):
      if counts[i] > 1:
        x = features[inverse == i]
        ave, var = x.mean(0), (x - x.mean(0)).pow(2).mean(0)
        w = torch.clamp(counts[i] / (self.amount[k] + counts[i]), min=1 - self.momentum)
        self.covariance[k] = (self.covariance[k] * (1 - w) + var * w
                              + w * (1 - w) * (self.mean[k] - ave).pow(2))
        self.mean[k] = self.mean[k] * (1 - w) + ave * w
      self.amount[k] += counts[i]

  def global_update(self, features, labels):
    (self.update_each_class if self.num_classes > 1000 else self.update_diag)(features, labels)


def intra_synthesis(features, labels, covariance, lam: float, noise):
  """``noise`` [M, B, D] in place of the official ``torch.randn_like`` draws."""
  cv = covariance[labels]
  scale = torch.tensor(lam).sqrt()
  out = []
  for m in range(noise.shape[0]):
    cv = cv.sqrt()  # Again each copy.
    out.append(features + scale * cv * noise[m])
  return torch.cat(out, 0), labels.repeat(noise.shape[0])


def lamda_epoch(lamda: float, epochs: int, ep: int) -> float:
  r = ep / epochs
  return lamda * (1.0 if r <= 0.4 else 0.9 if r <= 0.6 else 0.75 if r <= 0.8 else 0.6)


def _masks(labels_anchor, labels_all, batch):
  pos = labels_all[None, :] == labels_anchor[:, None]
  own = torch.eye(batch, dtype=torch.bool).repeat(1, labels_all.shape[0] // batch)
  return pos & ~own, labels_all[None, :] != labels_anchor[:, None]


def multi_similarity(x, labels, batch, thresh=0.5, margin=0.1, scale_pos=2.0, scale_neg=40.0):
  sim = x[:batch] @ x.t()
  pos_mask, neg_mask = _masks(labels[:batch], labels, batch)
  losses = []
  for i in range(batch):
    pos = sim[i][pos_mask[i]]
    pos = pos[pos < 1 - 1e-5]
    neg = sim[i][neg_mask[i]]
    if len(neg) < 1 or len(pos) < 1:
      continue
    neg_kept, pos_kept = neg[neg + margin > pos.min()], pos[pos - margin < neg.max()]
    if len(neg_kept) < 1 or len(pos_kept) < 1:
      continue
    losses.append(torch.log(1 + torch.exp(-scale_pos * (pos_kept - thresh)).sum()) / scale_pos
                  + torch.log(1 + torch.exp(scale_neg * (neg_kept - thresh)).sum()) / scale_neg)
  return sum(losses) / batch if losses else torch.zeros((), requires_grad=True)


def contrastive(x, labels, batch, pos_margin=0.8, neg_margin=0.5):
  sim = x[:batch] @ x.t()
  pos_mask, neg_mask = _masks(labels[:batch], labels, batch)
  pos, neg = sim[pos_mask], sim[neg_mask]
  return ((pos_margin - pos[pos < pos_margin]).sum() + (neg[neg > neg_margin] - neg_margin).sum()
          ) / batch


class Trainer:
  """run.py's epoch loop, one step at a time (epochs counted from 1)."""

  def __init__(self, model: Embedding, estimator: Estimator, loss, lr: float,
               weight_decay: float, milestones, gamma: float, steps_per_epoch: int,
               epochs: int, start_epoch: int, update_every: int, lamda: float):
    self.model, self.estimator, self.loss = model, estimator, loss
    self.opt = torch.optim.Adam([{"lr": lr, "params": model.parameters()}],
                                weight_decay=weight_decay)
    self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=milestones,
                                                      gamma=gamma)
    self.steps_per_epoch, self.epochs, self.start_epoch = steps_per_epoch, epochs, start_epoch
    self.update_every, self.lamda, self.step_count = update_every, lamda, 0

  def estimate_due(self) -> bool:
    ep = self.step_count // self.steps_per_epoch + 1
    return (self.step_count % self.steps_per_epoch == 0 and ep > self.start_epoch
            and (ep - self.start_epoch - 1) % self.update_every == 0)

  def step(self, x, labels, noise):
    ep = self.step_count // self.steps_per_epoch + 1
    embeddings = self.model(x)
    if ep > self.start_epoch:
      aug, aug_labels = intra_synthesis(embeddings, labels, self.estimator.covariance,
                                        lamda_epoch(self.lamda, self.epochs, ep), noise)
      x_all = torch.cat([F.normalize(embeddings, dim=1), F.normalize(aug, dim=1)])
      loss = self.loss(x_all, torch.cat([labels, aug_labels]), len(labels))
    else:
      loss = self.loss(F.normalize(embeddings, dim=1), labels, len(labels))
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    self.step_count += 1
    if self.step_count % self.steps_per_epoch == 0:
      self.sched.step()
    return float(loss.detach())
