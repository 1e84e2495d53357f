"""Correct models in PyTorch (IBP heads, and B-CNN and iSQRT-COV heads), written the ways people
write them: `ibp-check model` must pass every one (exit 0, no FAIL) at any seed. Each function
builds one and returns (model, optimizer); one sample is (3, 32, 32), channels-first."""

import torch
import torch.nn.functional as F
from torch import nn

from impls.torch import IBPHead, sqrtm

IMAGE_SIZE = 32
CHANNELS = 32
CLASSES = 7
#: VGG-16's convolutions up to relu5_3 (the last max-pool dropped, as the IBP authors do).
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _backbone(dropout: float = 0.0) -> nn.Sequential:
    """Two conv blocks: (3, 32, 32) -> (CHANNELS, 8, 8)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout2d(dropout),
        nn.Conv2d(16, CHANNELS, 3, padding=1),
        nn.BatchNorm2d(CHANNELS),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _frozen(module: nn.Module) -> nn.Module:
    """A pretrained backbone kept fixed, as a first training stage does."""
    module.requires_grad_(False)
    return module.eval()


def sequential_ibp_head() -> tuple[nn.Module, torch.optim.Optimizer]:
    """nn.Sequential with this library's IBPHead, everything trained with Adam."""
    model = nn.Sequential(_backbone(), IBPHead(CHANNELS), nn.Linear(CHANNELS**2, CLASSES))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


class HandWrittenForward(nn.Module):
    """The whole head written inline in forward, on a frozen backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _frozen(_backbone())
        self.fc = nn.Linear(CHANNELS**2, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        b, c, h, w = x.shape
        f = x.reshape(b, c, h * w)
        a = torch.bmm(f, f.transpose(1, 2)) / (h * w) + 1e-5 * torch.eye(c, device=x.device)
        s, u = torch.linalg.eigh(a)
        z = u @ torch.diag_embed(s.clamp(min=0).sqrt()) @ u.transpose(1, 2)
        y = torch.sign(z) * torch.sqrt(torch.abs(z) + 1e-5)
        y = F.normalize(y.reshape(b, -1), dim=1)
        return self.fc(y)


def hand_written_forward() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = HandWrittenForward()
    return model, torch.optim.SGD(model.fc.parameters(), lr=1.0, momentum=0.9)


class BilinearPool(nn.Module):
    """The most common spelling: eps * torch.eye(c) built in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(2)
        n, c = v.shape[-1], v.shape[1]
        return v @ v.mT / n + 1e-5 * torch.eye(c)


class MatrixSqrt(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        s, u = torch.linalg.eigh(a)
        return (u * s.clamp_min(0).sqrt().unsqueeze(-2)) @ u.mT


class SignedSqrt(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sign(y) * (torch.sqrt(y.abs() + 1e-5) - 1e-5**0.5)


class Normalize(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.normalize(y, dim=1)


def head_modules_by_hand() -> tuple[nn.Module, torch.optim.Optimizer]:
    """One hand-written module per stage, flattened before the signed square root, on a frozen
    backbone (the authors' first stage: the classifier alone, SGD at lr 1.0)."""
    model = nn.Sequential(
        _frozen(_backbone()),
        BilinearPool(),
        MatrixSqrt(),
        nn.Flatten(),
        SignedSqrt(),
        Normalize(),
        nn.Linear(CHANNELS**2, CLASSES),
    )
    return model, torch.optim.SGD(model[-1].parameters(), lr=1.0, momentum=0.9)


def dropout_and_batchnorm() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Dropout in the backbone and before the classifier, BatchNorm throughout."""
    model = nn.Sequential(
        _backbone(dropout=0.1),
        IBPHead(CHANNELS),
        nn.Dropout(0.5),
        nn.Linear(CHANNELS**2, CLASSES),
    )
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


class LogitsAndFeatures(nn.Module):
    """Returns (logits, features), as models used for retrieval or distillation do."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _backbone()
        self.head = IBPHead(CHANNELS)
        self.classifier = nn.Linear(CHANNELS**2, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.head(self.backbone(x))
        return self.classifier(features), features


def logits_and_features() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = LogitsAndFeatures()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def compiled() -> tuple[nn.Module, torch.optim.Optimizer]:
    """torch.compile'd, as PyTorch 2 recommends."""
    model = nn.Sequential(_backbone(), IBPHead(CHANNELS), nn.Linear(CHANNELS**2, CLASSES))
    return torch.compile(model), torch.optim.Adam(model.parameters(), lr=1e-3)


def _vgg16_features() -> nn.Sequential:
    """torchvision's VGG-16 features, initialised as torchvision does (He, fan-out)."""
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG16:
        if width == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        conv = nn.Conv2d(channels, int(width), 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        channels = int(width)
    return nn.Sequential(*layers)


def vgg16_small_input() -> tuple[nn.Module, torch.optim.Optimizer]:
    """VGG-16 to relu5_3 (frozen, as with ImageNet weights) at 32 x 32: a 2 x 2 map of 512
    channels, N < C, so the covariance is rank-deficient and eps * I carries it."""
    model = nn.Sequential(_frozen(_vgg16_features()), IBPHead(512), nn.Linear(512**2, CLASSES))
    return model, torch.optim.SGD(model[-1].parameters(), lr=1.0, momentum=0.9)


class Branches(nn.Module):
    """Two branches concatenated, and a residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.left = nn.Conv2d(16, CHANNELS // 2, 3, padding=1)
        self.right = nn.Conv2d(16, CHANNELS // 2, 5, padding=2)
        self.block = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.head = IBPHead(CHANNELS)
        self.classifier = nn.Linear(CHANNELS**2, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(torch.cat([self.left(x), self.right(x)], dim=1))
        x = F.max_pool2d(torch.relu(x + self.block(x)), 2)
        return self.classifier(self.head(x))


def branches_and_skips() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = Branches()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


class LocationsPool(nn.Module):
    """Pooling of (B, N, C) locations, as code written for channels-last maps does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnc,bnd->bcd", x, x) / x.shape[1] + 1e-5 * torch.eye(
            x.shape[2], dtype=x.dtype
        )


class ToLocations(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1, 2)


class LibrarySqrtm(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return sqrtm(a)


def channels_last_pooling() -> tuple[nn.Module, torch.optim.Optimizer]:
    """The map permuted to (B, H*W, C) before a pooling of locations; this library's sqrtm."""
    model = nn.Sequential(
        _backbone(),
        ToLocations(),
        LocationsPool(),
        LibrarySqrtm(),
        SignedSqrt(),
        nn.Flatten(),
        Normalize(),
        nn.Linear(CHANNELS**2, CLASSES),
    )
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


class CentredCovariance(nn.Module):
    """iSQRT-COV's Covpool: X I_hat X^T, I_hat = (1/N) I - (1/N^2) 1 1^T."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        features = x.reshape(b, c, n)
        i_hat = (torch.eye(n, dtype=x.dtype) - torch.full((n, n), 1.0 / n, dtype=x.dtype)) / n
        return features @ i_hat @ features.mT


class IterativeSqrt(nn.Module):
    """iSQRT-COV's Sqrtm: trace pre-normalisation, coupled Newton-Schulz iterations, autograd
    through them, post-compensation."""

    def __init__(self, iterations: int = 5) -> None:
        super().__init__()
        self.iterations = iterations

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        trace = a.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
        eye = torch.eye(a.shape[-1], dtype=a.dtype).expand_as(a)
        y, z = a / trace, eye
        for _ in range(self.iterations):
            t = 0.5 * (3 * eye - z @ y)
            y, z = y @ t, t @ z
        return y * trace.sqrt()


class Triuvec(nn.Module):
    """The upper triangle, row by row."""

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        rows, columns = torch.triu_indices(m.shape[-1], m.shape[-1])
        return m[:, rows, columns]


def isqrt_cov_head() -> tuple[nn.Module, torch.optim.Optimizer]:
    """An iSQRT-COV head (Li et al., CVPR 2018): centred covariance, 5 iterations, the upper
    triangle, everything trained with SGD as the authors do."""
    model = nn.Sequential(
        _backbone(),
        CentredCovariance(),
        IterativeSqrt(5),
        Triuvec(),
        nn.Linear(CHANNELS * (CHANNELS + 1) // 2, CLASSES),
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


class SecondMoment(nn.Module):
    """B-CNN's pooling: X X^T / N, no eps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.flatten(2)
        return features @ features.mT / features.shape[-1]


class BcnnSignedSqrt(nn.Module):
    """sign(y) sqrt(|y| + 1e-12), as B-CNN ports write it."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sign(y) * torch.sqrt(y.abs() + 1e-12)


def bcnn_head() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A B-CNN head (Lin et al., ICCV 2015) on a frozen backbone: second moment, signed sqrt, L2,
    the classifier alone trained with SGD at lr 1.0."""
    model = nn.Sequential(
        _frozen(_backbone()),
        SecondMoment(),
        nn.Flatten(),
        BcnnSignedSqrt(),
        Normalize(),
        nn.Linear(CHANNELS**2, CLASSES),
    )
    return model, torch.optim.SGD(model[-1].parameters(), lr=1.0, momentum=0.9)
