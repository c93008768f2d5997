"""Per-episode 1x1 heads trained on frozen support features, E episodes at once.

GFSS capstone (seed 003 §3.4-3.5 Eq. 4-8 and §4.2; research/wilson_sdr_gfss_simformer.md
§C.1-C.2 and the GFSS bullet of §G). For every episode a head is trained on the features of its K
support images for `steps` plain SGD steps (lr 0.1, no momentum, no weight decay), then predicts
on the query and on a base image:

- binary: a 2-way head, weighted cross-entropy with class weights [1, n0/n1];
- generalized: a (B+2)-way head (background, the B base classes, the novel class last), started
  from the pre-trained base classifier's rows. Its loss (Eq. 8) is L_ce' + gamma * L_distil:
  L_ce' (Eq. 4-5) is a binary NLL of the aggregated probabilities p_fg = P_last and
  p_bg = sum_{k != last} P_k, with the same weights [1, n0/n1]. L_distil (Eq. 6-7) is MiB's
  unbiased distillation from the frozen (B+1)-way base classifier, where the old background takes
  background + novel:
  -mean_pixels (q_0 log(P_0 + P_last) + sum_{c=1..B} q_c log P_c) / (B+1), q = softmax(teacher).

Weights: n0, n1 = the episode's support pixels labelled 0 and 1 (void excluded); [1, 1] when
n1 = 0. The cross-entropies are torch's weighted mean, sum_i w_{y_i} l_i / sum_i w_{y_i} over
the episode's non-void pixels; the distillation averages over every pixel, void included (as MiB).

Batching: the heads are tensors E x C x D (and E x C). Each episode's loss is computed on its own
slice and the E losses are summed before the backward pass, so episode e's gradient is the
gradient of its own loss alone. The result equals training the episodes one at a time. The
gradient with respect to the full-size logits is written out (softmax minus target, see
`_logit_gradient`; 3-4 times faster than autograd through the losses on a CPU), the rest
(upsampling, 1x1 conv) is autograd's.

Logits: a 1x1 convolution of the features, bilinearly upsampled (align_corners=False) to the
labels' size; the losses are computed on the full-size logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ifss.errors import IfssError, unknown
from ifss.losses import IGNORE

KINDS = ("binary", "generalized")


@dataclass(frozen=True)
class HeadSettings:
    kind: str  # "binary": 2-way head, weighted CE | "generalized": (B+2)-way, Eq. 8
    steps: int = 100
    lr: float = 0.1
    gamma: float = 0.0  # weight of the distillation (generalized only)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise unknown("head kind", self.kind, KINDS)
        if self.steps < 0:
            raise IfssError(f"head steps must be >= 0, not {self.steps}")
        if not self.lr > 0:
            raise IfssError(f"head lr must be > 0, not {self.lr}")
        if self.gamma < 0:
            raise IfssError(f"head gamma (distillation weight) must be >= 0, not {self.gamma}")


# --- logits and predictions --------------------------------------------------------------------

def head_logits(weight: Tensor, bias: Tensor | None, features: Tensor,
                size: tuple[int, int]) -> Tensor:
    """features E x N x D x h x w -> logits E x N x C x H x W (1x1 conv, then bilinear upsampling
    to `size`, align_corners=False), in the head's dtype and never under autocast (the heads are
    trained in full precision whatever context the caller runs in)."""
    if features.dim() != 5:
        raise IfssError(f"features must be E x N x D x h x w, not of shape {tuple(features.shape)}")
    E, N, D, h, w = features.shape
    _check_head(weight, bias, E, D)
    with torch.autocast(features.device.type, enabled=False):
        # E x 1 x C x D @ E x N x D x hw: one matrix product per (episode, image)
        low = weight.unsqueeze(1) @ features.to(weight.dtype).reshape(E, N, D, h * w)
        if bias is not None:
            low = low + bias[:, None, :, None]
        return upsample(low.reshape(E, N, -1, h, w), size)


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of the last two dimensions to `size`, align_corners=False: the same
    numbers as F.interpolate (to rounding), as two matrix products A_h x A_w^T with the
    interpolation matrices. On a CPU this is 4-5 times faster than F.interpolate forward and
    backward at the heads' sizes (few channels, large upsampling factors)."""
    h, w = x.shape[-2:]
    rows = _interpolation_matrix(h, int(size[0]), x.device, x.dtype)
    cols = _interpolation_matrix(w, int(size[1]), x.device, x.dtype)
    return rows @ x @ cols.T


_MATRICES: dict = {}


def _interpolation_matrix(n_in: int, n_out: int, device, dtype) -> Tensor:
    """n_out x n_in: row i holds the two weights of output i (PyTorch's rule for align_corners
    False: source = (i + 0.5) * n_in / n_out - 0.5, clamped at 0; the right neighbour clamped at
    the edge)."""
    key = (n_in, n_out, str(device), dtype)
    if key not in _MATRICES:
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
        left = src.floor().long().clamp_max(n_in - 1)
        right = (left + 1).clamp_max(n_in - 1)
        frac = src - left
        matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        matrix.index_put_((rows, left), 1 - frac, accumulate=True)
        matrix.index_put_((rows, right), frac, accumulate=True)
        _MATRICES[key] = matrix.to(device=device, dtype=dtype)
    return _MATRICES[key]


def binary_prediction(logits: Tensor, fg: Tensor | int) -> Tensor:
    """logits E x N x C x H x W -> E x N x H x W in {0, 1} (int64): 1 where the logit of channel
    `fg` (an int, or an E-vector of channel indices, one per episode) exceeds the largest logit of
    the other channels; a tie is 0."""
    if logits.dim() != 5 or logits.shape[2] < 2:
        raise IfssError(f"logits must be E x N x C x H x W with C >= 2, not of shape "
                        f"{tuple(logits.shape)}")
    E, N, C, H, W = logits.shape
    index = torch.as_tensor(fg, dtype=torch.long, device=logits.device)
    if index.dim() == 0:
        index = index.expand(E)
    if index.shape != (E,):
        raise IfssError(f"fg must be an int or a vector of {E} channel indices, not of shape "
                        f"{tuple(index.shape)}")
    if bool(((index < 0) | (index >= C)).any()):
        raise IfssError(f"fg channel indices must lie in 0..{C - 1}, got {index.tolist()}")
    index = index.view(E, 1, 1, 1, 1).expand(E, N, 1, H, W)
    fg_logit = logits.gather(2, index).squeeze(2)
    others = logits.scatter(2, index, float("-inf")).amax(dim=2)
    return (fg_logit > others).long()


# --- losses (each returns an E-vector) ----------------------------------------------------------

def weighted_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of a 2-way head, logits E x K x 2 x H x W, labels E x K x H x W in {0, 1, 255}:
    per episode sum_i w_{y_i} (-log softmax(z_i)_{y_i}) / sum_i w_{y_i} over non-void pixels,
    w = [1, n0/n1] ([1, 1] when n1 = 0). An episode whose weights sum to 0 (no valid pixel, or
    no label-0 pixel, so w1 = 0) has loss 0."""
    _check_logits(logits, labels, channels=2)
    pixel_w, total = pixel_weights(labels, logits.dtype)
    return _weighted_mean(_two_way_log_probs(logits, _safe_index(labels)), pixel_w, total)


def aggregated_binary_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 4-5: logits E x K x C x H x W (the novel class last), labels E x K x H x W. With P the
    softmax over C, log p_fg = log P_last and log p_bg = log sum_{k != last} P_k (logsumexp of
    the other logits minus logsumexp of all); weighted NLL with the weights of weighted_ce."""
    _check_logits(logits, labels, channels=None)
    pixel_w, total = pixel_weights(labels, logits.dtype)
    den = torch.logsumexp(logits, dim=2)
    return _weighted_mean(_aggregated_log_probs(logits, den, labels), pixel_w, total)


def background_distillation(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Eq. 6-7 (MiB's unbiased distillation with one new channel, the last): logits
    E x K x (B+2) x H x W, teacher_logits E x K x (B+1) x H x W. den = logsumexp of all B+2,
    log p_bg = logsumexp(z_0, z_last) - den, log p_c = z_c - den (c = 1..B), q = softmax(teacher);
    loss = -mean over every pixel (void included) of (q_0 log p_bg + sum_c q_c log p_c) / (B+1)."""
    if logits.dim() != 5 or logits.shape[2] < 3:
        raise IfssError(f"distillation logits must be E x K x (B+2) x H x W with B >= 1, not of "
                        f"shape {tuple(logits.shape)}")
    E, K, C, H, W = logits.shape
    if teacher_logits.shape != (E, K, C - 1, H, W):
        raise IfssError(f"teacher logits must be of shape {(E, K, C - 1, H, W)} (one channel "
                        f"fewer than the head), not {tuple(teacher_logits.shape)}")
    den = torch.logsumexp(logits, dim=2)
    return _distillation(logits, den, torch.softmax(teacher_logits, dim=2))


def pixel_weights(labels: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """(per-pixel class weights E x K x H x W: 1 for label 0, n0/n1 for label 1, 0 for void;
    their sum per episode, an E-vector). n0, n1 count the episode's K support labels together."""
    if labels.dim() != 4:
        raise IfssError(f"labels must be E x K x H x W, not of shape {tuple(labels.shape)}")
    bad = (labels != 0) & (labels != 1) & (labels != IGNORE)
    if bool(bad.any()):
        raise IfssError(f"episode labels must be 0, 1 or {IGNORE}, found "
                        f"{sorted(set(labels[bad].unique().tolist()))[:5]}")
    fg, bg = labels == 1, labels == 0
    n1 = fg.flatten(1).sum(1)
    n0 = bg.flatten(1).sum(1)
    dtype = dtype or torch.get_default_dtype()
    w1 = torch.where(n1 > 0, n0.to(dtype) / n1.clamp_min(1).to(dtype), torch.ones((), dtype=dtype,
                                                                              device=n1.device))
    pixel_w = bg.to(dtype) + fg.to(dtype) * w1.view(-1, 1, 1, 1)
    return pixel_w, pixel_w.flatten(1).sum(1)


def _weighted_mean(log_p: Tensor, pixel_w: Tensor, total: Tensor) -> Tensor:
    # total is 0 or >= 1 (every label-0 pixel weighs 1), so clamping at 1 changes only 0/0 -> 0
    return -(pixel_w * log_p).flatten(1).sum(1) / total.clamp_min(1)


def _safe_index(labels: Tensor) -> Tensor:
    return torch.where(labels == IGNORE, torch.zeros_like(labels), labels).long()


def _two_way_log_probs(logits: Tensor, index: Tensor) -> Tensor:
    return torch.log_softmax(logits, dim=2).gather(2, index.unsqueeze(2)).squeeze(2)


def _aggregated_log_probs(logits: Tensor, den: Tensor, labels: Tensor) -> Tensor:
    log_fg = logits[:, :, -1] - den
    log_bg = torch.logsumexp(logits[:, :, :-1], dim=2) - den
    return torch.where(labels == 1, log_fg, log_bg)


def _distillation(logits: Tensor, den: Tensor, q: Tensor) -> Tensor:
    classes = q.shape[2]  # B + 1
    log_bg = torch.logaddexp(logits[:, :, 0], logits[:, :, -1]) - den
    log_base = logits[:, :, 1:-1] - den.unsqueeze(2)
    per_pixel = (q[:, :, 0] * log_bg + (q[:, :, 1:] * log_base).sum(2)) / classes
    return -per_pixel.flatten(1).mean(1)


# --- training -----------------------------------------------------------------------------------

def fit_heads(settings: HeadSettings, features: Tensor, labels: Tensor, weight: Tensor,
              bias: Tensor | None,
              teacher: tuple[Tensor, Tensor | None] | None = None) -> tuple[Tensor, Tensor | None]:
    """Train E heads, one per episode, on their support features.

    features E x K x D x h x w (support features), labels E x K x H x W (0 = not the class,
    1 = the episode's novel class, 255 void), weight E x C x D and bias E x C (or None) the
    heads' start values (the caller draws/copies them: binary C=2; generalized C=B+2 = base
    classifier rows + the novel row last); teacher = (B+1) x D weight and B+1 bias (or None) of
    the frozen base classifier for the distillation (generalized with gamma > 0; ignored
    otherwise). Returns the trained (weight, bias), new tensors (the inputs are not changed).
    Logits = 1x1 conv of features, bilinearly upsampled (align_corners=False) to H x W, loss on
    the full-size logits; `settings.steps` plain SGD steps, w <- w - lr * grad.
    """
    if features.dim() != 5:
        raise IfssError(f"support features must be E x K x D x h x w, not of shape "
                        f"{tuple(features.shape)}")
    E, K, D, _, _ = features.shape
    if labels.shape[:2] != (E, K) or labels.dim() != 4:
        raise IfssError(f"support labels must be of shape ({E}, {K}, H, W) to match the "
                        f"features, not {tuple(labels.shape)}")
    _check_head(weight, bias, E, D)
    C = weight.shape[1]
    generalized = settings.kind == "generalized"
    if not generalized and C != 2:
        raise IfssError(f"a binary head has 2 channels, not {C}")
    if generalized and C < 3:
        raise IfssError(f"a generalized head has B + 2 >= 3 channels (background, base classes, "
                        f"the novel class), not {C}")
    with torch.inference_mode(False):  # callable from inference mode as from no_grad
        return _fit(settings, features, labels, weight, bias, teacher, generalized)


def _fit(settings: HeadSettings, features: Tensor, labels: Tensor, weight: Tensor,
         bias: Tensor | None, teacher, generalized: bool) -> tuple[Tensor, Tensor | None]:
    C = weight.shape[1]
    size = tuple(labels.shape[-2:])
    features = features.detach().to(weight.dtype)  # frozen, in the head's precision
    if features.is_inference():  # made under inference mode: autograd cannot save it
        features = features.clone()
    pixel_w, total = pixel_weights(labels, weight.dtype)  # fixed for the episode: computed once
    q = None
    if generalized and settings.gamma > 0:
        q = _teacher_probabilities(teacher, features, size, C - 1)
    # d(episode loss)/d(logit) = a * (P - R) + b * (P - R') (see _logit_gradient); a per pixel
    a = pixel_w / total.clamp_min(1).view(-1, 1, 1, 1)
    b = settings.gamma / ((C - 1) * labels[0].numel()) if q is not None else 0.0

    w = weight.detach().clone().requires_grad_(True)
    bias_ = None if bias is None else bias.detach().clone().requires_grad_(True)
    params = [w] if bias_ is None else [w, bias_]
    # full precision whatever the caller's context (an evaluation under autocast and no_grad)
    with torch.autocast(features.device.type, enabled=False):
        for _ in range(settings.steps):
            with torch.enable_grad():
                logits = head_logits(w, bias_, features, size)
            with torch.no_grad():
                grad_logits = _logit_gradient(logits, labels, a, b, q, generalized)
            # the linear part (1x1 conv, upsampling) by autograd; the episodes' losses are
            # summed, so each episode's parameters get the gradient of its own loss only
            grads = torch.autograd.grad(logits, params, grad_logits)
            with torch.no_grad():
                for param, grad in zip(params, grads):
                    param.sub_(settings.lr * grad)
    return w.detach(), None if bias_ is None else bias_.detach()


def _logit_gradient(z: Tensor, labels: Tensor, a: Tensor, b: float, q: Tensor | None,
                    generalized: bool) -> Tensor:
    """The gradient of the E episodes' summed losses with respect to the full-size logits z,
    in closed form (the losses above, differentiated; checked against autograd in the tests).
    Autograd through the losses spends most of a step on slicing's zero-filled gradients and on
    saved intermediates; this takes a few passes over z.

    With P = softmax(z), a_i = w_{y_i} / sum w (the CE's pixel weight), b = gamma / ((B+1) K H W):
    - weighted CE: a (P - onehot(y));
    - aggregated CE: a (P - R), R = onehot(last) where y = 1, else the softmax over the other
      channels (0 on the last), the gradient of -log sum_{k != last} P_k;
    - distillation: b (P - R'), R'_c = q_c for the base classes c = 1..B and
      R'_0, R'_last = q_0 * softmax(z_0, z_last) (the old background split between the two).
    The differences P - R are written without cancellation: for y = 0, P_k - R_k = -R_k P_last
    (k != last) and P_last - 0; for y = 1, P_last - 1 = -p_bg.
    """
    fg, bg = (labels == 1).to(z.dtype), (labels == 0).to(z.dtype)
    if not generalized:
        p1 = torch.sigmoid(z[:, :, 1] - z[:, :, 0])  # = P_1; P_0 = 1 - p1 = sigmoid(-d)
        g1 = a * (bg * p1 - fg * torch.sigmoid(z[:, :, 0] - z[:, :, 1]))
        return torch.stack([-g1, g1], dim=2)
    others, last = z[:, :, :-1], z[:, :, -1]
    # one exponential of the other channels serves P and R: e_k = exp(z_k - m_o)
    m_o = others.amax(dim=2)
    e = (others - m_o.unsqueeze(2)).exp_()
    s_o = e.sum(dim=2)
    m = torch.maximum(m_o, last)
    scale = torch.exp(m_o - m)  # P_k = e_k * scale / s for k != last
    e_last = torch.exp(last - m)
    s = s_o * scale + e_last
    p_last, p_bg = e_last / s, s_o * scale / s
    grad = torch.empty_like(z)
    # k != last: (a fg + b) P_k - a bg R_k P_last, with P_k = e_k scale / s and R_k = e_k / s_o
    coef = (a * fg + b) * scale / s - a * bg * p_last / s_o
    torch.mul(e, coef.unsqueeze(2), out=grad[:, :, :-1])
    grad[:, :, -1] = a * (bg * p_last - fg * p_bg) + b * p_last
    if q is not None:
        grad[:, :, 1:-1].sub_(q[:, :, 1:], alpha=b)
        grad[:, :, 0].sub_(b * q[:, :, 0] * torch.sigmoid(z[:, :, 0] - last))
        grad[:, :, -1].sub_(b * q[:, :, 0] * torch.sigmoid(last - z[:, :, 0]))
    return grad


@torch.no_grad()
def _teacher_probabilities(teacher, features: Tensor, size: tuple[int, int],
                           classes: int) -> Tensor:
    """softmax of the frozen base classifier's logits, E x K x (B+1) x H x W (fixed: once)."""
    if teacher is None:
        raise IfssError("a generalized head with gamma > 0 needs the base classifier (teacher) "
                        "for the distillation")
    t_weight, t_bias = teacher
    D = features.shape[2]
    if t_weight.shape != (classes, D) or (t_bias is not None and t_bias.shape != (classes,)):
        raise IfssError(f"the teacher must be a {classes} x {D} weight and a {classes} bias "
                        f"(B+1 = background + base classes), not {tuple(t_weight.shape)} and "
                        f"{None if t_bias is None else tuple(t_bias.shape)}")
    E = features.shape[0]
    weight = t_weight.to(features).unsqueeze(0).expand(E, classes, D)
    bias = None if t_bias is None else t_bias.to(features).unsqueeze(0).expand(E, classes)
    return torch.softmax(head_logits(weight, bias, features, size), dim=2)


def _check_head(weight: Tensor, bias: Tensor | None, episodes: int, dim: int) -> None:
    if weight.dim() != 3 or weight.shape[0] != episodes or weight.shape[2] != dim:
        raise IfssError(f"head weight must be E x C x D = ({episodes}, C, {dim}), not "
                        f"{tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:2]:
        raise IfssError(f"head bias must be E x C = {tuple(weight.shape[:2])}, not "
                        f"{tuple(bias.shape)}")


def _check_logits(logits: Tensor, labels: Tensor, channels: int | None) -> None:
    if logits.dim() != 5 or (channels is not None and logits.shape[2] != channels) \
            or logits.shape[2] < 2:
        want = f"{channels}" if channels else "C >= 2"
        raise IfssError(f"logits must be E x K x {want} x H x W, not of shape "
                        f"{tuple(logits.shape)}")
    E, K, _, H, W = logits.shape
    if labels.shape != (E, K, H, W):
        raise IfssError(f"labels must be of shape {(E, K, H, W)} to match the logits, not "
                        f"{tuple(labels.shape)}")
