"""The IBP head as a torch.nn.Module."""

import torch
from torch import nn

from impls.torch.stages import bilinear_pool, compute_dtype, l2_normalize, signed_sqrt, sqrtm
from reference.contracts import IBPInputError, check_choice, check_feature_map
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_NEWTON_SCHULZ_BACKWARD,
    DEFAULT_NEWTON_SCHULZ_ITERATIONS,
    DEFAULT_SQRTM_METHOD,
    NEWTON_SCHULZ_BACKWARDS,
    SIGNED_SQRT_DELTA,
    SQRTM_METHODS,
)


class IBPHead(nn.Module):
    """(B, C, H, W) feature map -> pool -> sqrtm -> signed sqrt -> L2 -> (B, C*C) [-> logits].

    With `num_classes`, a linear classifier on the flattened (row-major) normalised matrix
    follows and the module returns logits (B, num_classes).
    """

    def __init__(
        self,
        in_channels,
        num_classes=None,
        eps=DEFAULT_EPS,
        method=DEFAULT_SQRTM_METHOD,
        num_iters=DEFAULT_NEWTON_SCHULZ_ITERATIONS,
        backward=DEFAULT_NEWTON_SCHULZ_BACKWARD,
        delta=SIGNED_SQRT_DELTA,
    ):
        super().__init__()
        if in_channels is None or in_channels < 1:
            raise IBPInputError(
                f"in_channels must be a positive channel count, got {in_channels!r}"
            )
        check_choice(method, SQRTM_METHODS, "sqrtm method")
        check_choice(backward, NEWTON_SCHULZ_BACKWARDS, "Newton-Schulz backward")
        self.in_channels = in_channels
        self.eps, self.method, self.num_iters = eps, method, num_iters
        self.backward_method, self.delta = backward, delta
        self.classifier = nn.Linear(in_channels**2, num_classes) if num_classes else None

    def forward(self, x):
        check_feature_map(x.shape, "channels_first", self.in_channels)
        # One rounding at the end instead of one per stage for half precision input.
        wide = x.to(compute_dtype(x))
        z = sqrtm(
            bilinear_pool(wide, self.eps),
            method=self.method,
            num_iters=self.num_iters,
            backward=self.backward_method,
        )
        v = torch.flatten(l2_normalize(signed_sqrt(z, self.delta)), 1).to(x.dtype)
        return v if self.classifier is None else self.classifier(v)

    def extra_repr(self):
        return (
            f"in_channels={self.in_channels}, eps={self.eps}, method={self.method!r}, "
            f"num_iters={self.num_iters}, backward={self.backward_method!r}, delta={self.delta}"
        )
