"""Models: the split SegNet of MTAN / Nash-MTL / the official AuxiNash code, ARML's WRN-28-2 with
classification and rotation heads and an EMA teacher for Exemplar-MT, and the linear model of the illustrative
example.

Every model returns a dict of raw head outputs and says which parameters are shared and which belong to
one task (``shared_parameters`` / ``task_specific_parameters``). ``width`` scales every channel count, so
tests and quick runs use tiny versions of the very same architectures.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, List, Mapping

import torch
from torch import nn


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MultiTaskModel(nn.Module):
    """A shared trunk plus ``self.heads`` (one module per task)."""

    heads: nn.ModuleDict

    def shared_parameters(self) -> List[nn.Parameter]:
        head_ids = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def task_specific_parameters(self) -> List[nn.Parameter]:
        return list(self.heads.parameters())

    def last_shared_parameters(self) -> List[nn.Parameter]:
        """The parameters of the last shared layer (the layer W of GradNorm's gradient norms, Chen et al. 2018
        Sec. 3.2): a declaration of each model, members of ``shared_parameters()``."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its last shared layer: define "
                                  "last_shared_parameters() (the methods that need it, e.g. GradNorm with "
                                  "layer='last', say so by needs_last_shared_parameters)")


class SegNet(MultiTaskModel):
    """SegNet split (MTAN, Liu et al. CVPR 2019): a VGG16-like encoder-decoder with max-unpooling, shared by
    all tasks, and per task a 3×3 conv + 1×1 conv head on the last decoder features (64 channels at width 1).

    ``tasks`` maps each task name to its number of output channels.
    """

    def __init__(self, tasks: Mapping[str, int], width: float = 1.0) -> None:
        super().__init__()
        filters = [scaled(c, width) for c in (64, 128, 256, 512, 512)]
        self.encoder_block = nn.ModuleList([conv_bn_relu(3, filters[0])])
        self.decoder_block = nn.ModuleList([conv_bn_relu(filters[0], filters[0])])
        self.conv_block_enc = nn.ModuleList([conv_bn_relu(filters[0], filters[0])])
        self.conv_block_dec = nn.ModuleList([conv_bn_relu(filters[0], filters[0])])
        for i in range(4):
            self.encoder_block.append(conv_bn_relu(filters[i], filters[i + 1]))
            self.decoder_block.append(conv_bn_relu(filters[i + 1], filters[i]))
            repeat = 1 if i == 0 else 2
            self.conv_block_enc.append(nn.Sequential(*[conv_bn_relu(filters[i + 1], filters[i + 1])
                                                       for _ in range(repeat)]))
            self.conv_block_dec.append(nn.Sequential(*[conv_bn_relu(filters[i], filters[i]) for _ in range(repeat)]))
        self.heads = nn.ModuleDict({name: nn.Sequential(nn.Conv2d(filters[0], filters[0], 3, padding=1),
                                                        nn.Conv2d(filters[0], channels, 1))
                                    for name, channels in tasks.items()})
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def last_shared_parameters(self) -> List[nn.Parameter]:
        """The last decoder block (conv 3×3, BatchNorm, ReLU) that makes the shared representation: the official
        Nash-MTL / FAMO / AuxiNash ``SegNet.last_shared_parameters`` (``self.segnet.conv_block_dec[-5]``, e.g.
        AvivSham/auxinash ``experiments/nyuv2/models.py`` lines 182-187; with five blocks, index -5 is 0)."""
        return list(self.conv_block_dec[0].parameters())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The shared representation: the last decoder features."""
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"SegNet pools five times: image sides must be multiples of 32, got {tuple(x.shape[-2:])}")
        indices = []
        for encoder, conv in zip(self.encoder_block, self.conv_block_enc):
            x, index = self.pool(conv(encoder(x)))
            indices.append(index)
        for i in range(5):
            x = self.unpool(x, indices[-i - 1])
            x = self.conv_block_dec[-i - 1](self.decoder_block[-i - 1](x))
        return x

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.encode(x)
        return {name: head(features) for name, head in self.heads.items()}


class BasicBlock(nn.Module):
    """Pre-activation wide residual block (Zagoruyko & Komodakis, 2016) with ReLU, the shortcut taking the
    activated input: this repository's earlier WRN (``block="legacy"``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        return skip + self.conv2(torch.relu(self.bn2(out)))


class ArmlBlock(nn.Module):
    """ARML's residual unit (``SSL/lib/wrn.py`` ``residual``), LeakyReLU(0.1):

    - ``activate_before_residual`` (the first block of the first group): a = act(BN(x)); out = shortcut(a) +
      conv(act(BN(conv_s(a))));
    - otherwise: out = shortcut(x) + conv(act(BN(conv_s(act(BN(x)))))), the shortcut taking the *raw* input x,
      also on the downsampling blocks (a 1×1 convolution of stride s when the stride or the width changes,
      else the identity).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool = False,
                 slope: float = 0.1) -> None:
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(slope)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride >= 2 or c_in != c_out
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate_before_residual:
            x = self.act(self.bn1(x))
            out = self.conv1(x)
        else:
            out = self.conv1(self.act(self.bn1(x)))
        return self.shortcut(x) + self.conv2(self.act(self.bn2(out)))


class WideResNet(nn.Module):
    """WRN-depth-widen feature extractor (WRN-28-2 by default): 64·widen-dimensional pooled features.

    ``block="arml"`` (default): ARML's ``SSL/lib/wrn.py`` (LeakyReLU(0.1), ``ArmlBlock``: the first block
    activates before the residual, the other blocks' shortcuts take the raw input; final BN, LeakyReLU(0.1),
    average pool). ``block="legacy"``: the earlier ReLU ``BasicBlock``. Convolutions: Kaiming-normal (fan_out).
    """

    def __init__(self, depth: int = 28, widen: int = 2, width: float = 1.0, block: str = "arml") -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        if block not in ("arml", "legacy"):
            raise ValueError(f"block must be 'arml' or 'legacy', got {block!r}")
        blocks = (depth - 4) // 6
        channels = [scaled(16, width)] + [scaled(c * widen, width) for c in (16, 32, 64)]
        layers: List[nn.Module] = [nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)]
        for group in range(3):
            for b in range(blocks):
                c_in, stride = (channels[group] if b == 0 else channels[group + 1]), ((1 if group == 0 else 2)
                                                                                      if b == 0 else 1)
                layers.append(ArmlBlock(c_in, channels[group + 1], stride, activate_before_residual=group == 0 and b == 0)
                              if block == "arml" else BasicBlock(c_in, channels[group + 1], stride))
        activation = nn.LeakyReLU(0.1) if block == "arml" else nn.ReLU(inplace=True)
        layers += [nn.BatchNorm2d(channels[-1]), activation, nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = channels[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@contextlib.contextmanager
def batch_stats_frozen(module: nn.Module):
    """Inside: every BatchNorm of ``module`` still normalises with the batch's statistics but leaves its running
    statistics (and batch counter) untouched: ARML's ``update_batch_stats(False)`` (``SSL/lib/wrn.py``
    ``BatchNorm2d.forward``: ``batch_norm(x, None, None, weight, bias, True, …)``)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class CifarSSLNet(MultiTaskModel):
    """WRN-28-2 trunk with a 10-way classification head and a 4-way rotation head (ARML ``SSL/lib/wrn.py``:
    ``output`` and ``rotate_output``, Xavier-normal weights, zero biases).

    Exemplar-MT compares the raw pooled trunk features of the student and of ``teacher``, an exponential moving
    average of the trunk updated by ``after_step`` with decay min(1 − 1/(t + 1), 0.95) at step t = 1, 2, …
    (ARML ``s4l.py`` ``Exemplar_MT.moving_average``, ``config.py`` ``ema_factor`` 0.95); the teacher is never
    trained by gradients and Exemplar-MT has no task-specific parameters.

    ``pipeline="legacy"``: the earlier network instead: ReLU ``BasicBlock`` trunk, a Linear(d→d) Exemplar-MT
    projection head (the teacher holds an EMA copy of it) and a constant decay 0.95.
    """

    def __init__(self, n_classes: int = 10, width: float = 1.0, ema_decay: float = 0.95, depth: int = 28,
                 widen: int = 2, pipeline: str = "arml") -> None:
        super().__init__()
        if pipeline not in ("arml", "legacy"):
            raise ValueError(f"pipeline must be 'arml' or 'legacy', got {pipeline!r}")
        self.pipeline = pipeline
        self.trunk = WideResNet(depth, widen, width, block=pipeline)
        dim = self.trunk.out_features
        self.heads = nn.ModuleDict({"classification": nn.Linear(dim, n_classes), "rotation": nn.Linear(dim, 4)})
        if pipeline == "legacy":
            self.heads["exemplar"] = nn.Linear(dim, dim)
        else:
            for head in self.heads.values():
                nn.init.xavier_normal_(head.weight)
                nn.init.zeros_(head.bias)
        self.ema_decay = ema_decay
        self.teacher = nn.ModuleDict({"trunk": copy.deepcopy(self.trunk)})
        if pipeline == "legacy":
            self.teacher["projection"] = copy.deepcopy(self.heads["exemplar"])
        self.teacher.requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def shared_parameters(self) -> List[nn.Parameter]:
        return list(self.trunk.parameters())

    def last_shared_parameters(self) -> List[nn.Parameter]:
        """The trunk's last convolution (the second of the last residual unit) and the final BatchNorm after it:
        the WRN's last conv–BN layer, as SegNet's is its last conv–BN–ReLU block. Our choice: neither ARML's nor
        the paper's code runs GradNorm here (README "Choices and known differences")."""
        layers = self.trunk.features
        last_unit = [m for m in layers if isinstance(m, (ArmlBlock, BasicBlock))][-1]
        final_norm = [m for m in layers if isinstance(m, nn.BatchNorm2d)][-1]
        return [*last_unit.conv2.parameters(), *final_norm.parameters()]

    def student_exemplar_features(self, features: torch.Tensor) -> torch.Tensor:
        """The student's Exemplar-MT features from trunk features (the legacy projection where there is one)."""
        return self.heads["exemplar"](features) if "exemplar" in self.heads else features

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.teacher.training
        self.teacher.train(self.training)
        out = self.teacher["trunk"](x)
        if "projection" in self.teacher:
            out = self.teacher["projection"](out)
        self.teacher.train(was_training)
        return out

    def current_decay(self) -> float:
        """The EMA decay of the next update: min(1 − 1/(t + 1), 0.95) at step t (constant in the legacy net)."""
        t = int(self.ema_steps) + 1
        return self.ema_decay if self.pipeline == "legacy" else min(1 - 1 / (t + 1), self.ema_decay)

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA update of the teacher from the student trunk (and the legacy projection)."""
        decay = self.current_decay()
        self.ema_steps += 1
        student = list(self.trunk.parameters())
        teacher = list(self.teacher["trunk"].parameters())
        if "projection" in self.teacher:
            student += list(self.heads["exemplar"].parameters())
            teacher += list(self.teacher["projection"].parameters())
        for s, t in zip(student, teacher):
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        for s, t in zip(self.trunk.buffers(), self.teacher["trunk"].buffers()):
            t.copy_(s)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}


class SharedLinear(MultiTaskModel):
    """The illustrative example: every task predicts y = Wᵀx with the same two shared parameters W."""

    def __init__(self, tasks: Mapping[str, int], n_inputs: int = 2, init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_inputs,), float(init)))
        self.task_names = list(tasks)
        self.heads = nn.ModuleDict()

    def last_shared_parameters(self) -> List[nn.Parameter]:
        """W, the only (shared) layer."""
        return [self.weight]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        prediction = x @ self.weight
        return {name: prediction for name in self.task_names}


class MultiLeNet(MultiTaskModel):
    """The LeNet variant of Multi-MNIST (the paper's Sec. 6.2: three convolutional layers, then two fully
    connected ones): a shared trunk conv5×5(10) → pool → conv5×5(20) → pool → conv3×3(40, padding 1) →
    fc(50), ReLU after each, and per task a linear head 50 → 10 (the second fully connected layer).

    The paper does not give the layers' sizes. The channel doubling 10 → 20 → 40, the 50-unit hidden layer and
    the linear per-task heads follow the LeNet target network of Pareto HyperNetworks (Navon et al. 2021,
    AvivNavon/pareto-hypernetworks ``experiments/multimnist/models.py``, ``n_conv_layers`` convolutions of
    ``2**i * 10`` channels then a 50-unit layer) and the 5×5 kernels Sener & Koltun's MultiLeNet
    (isl-org/MultiObjectiveOptimization ``multi_task/models/multi_lenet.py``); our choice: a third 3×3
    convolution that keeps the 4×4 map. Input: 1×28×28.
    """

    def __init__(self, tasks: Mapping[str, int], width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, hidden = (scaled(c, width) for c in (10, 20, 40, 50))
        self.conv1, self.conv2 = nn.Conv2d(1, c1, 5), nn.Conv2d(c1, c2, 5)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3 * 4 * 4, hidden)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, classes) for name, classes in tasks.items()})

    def last_shared_parameters(self) -> List[nn.Parameter]:
        """The 50-unit fully connected layer that makes the shared representation."""
        return list(self.fc.parameters())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"MultiLeNet takes 28×28 images, got {tuple(x.shape[-2:])}")
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        return torch.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.encode(x)
        return {name: head(features) for name, head in self.heads.items()}
