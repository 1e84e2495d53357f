"""The IBP head as a torch.nn.Module."""

import torch
from torch import nn

from impls.torch.stages import (
    _l2_normalize,
    _pool,
    _root,
    _signed_sqrt,
    check_sqrtm_options,
    compute_dtype,
    dtype_name,
)
from reference.contracts import (
    NON_FINITE_MESSAGE,
    OVERFLOW_MESSAGE,
    check_dtype,
    check_feature_map,
    check_non_negative,
    check_positive_int,
)
from reference.conventions import (
    DEFAULT_EPS,
    DEFAULT_SQRTM_METHOD,
    SIGNED_SQRT_DELTA,
)


class IBPHead(nn.Module):
    """(B, C, H, W) feature map -> pool -> sqrtm -> signed sqrt -> L2 -> (B, C*C) [-> logits].

    With `num_classes`, a linear classifier on the flattened (row-major) normalised matrix
    follows and the module returns logits (B, num_classes).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int | None = None,
        eps: float = DEFAULT_EPS,
        method: str = DEFAULT_SQRTM_METHOD,
        num_iters: int | None = None,
        backward: str | None = None,
        delta: float = SIGNED_SQRT_DELTA,
        check_range: bool | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes", allow_none=True)
        check_non_negative(eps, "eps")
        check_non_negative(delta, "delta")
        check_sqrtm_options(method, num_iters, backward, check_range)
        self.in_channels, self.check_range = in_channels, check_range
        self.eps, self.method, self.num_iters = eps, method, num_iters
        self.backward_method, self.delta = backward, delta
        self.classifier = None if num_classes is None else nn.Linear(in_channels**2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_dtype(dtype_name(x), "feature map")
        check_feature_map(x.shape, "channels_first", self.in_channels)
        # One rounding at the end instead of one per stage for half precision input.
        wide = x.to(compute_dtype(x))
        a = _pool(wide, self.eps)
        # One finiteness check per call (one host read, on a GPU too), after the root: NaN or
        # inf in the map, or an overflow of its covariance, shows up there.
        checks = [(x, NON_FINITE_MESSAGE.format(name="feature map")), (a, OVERFLOW_MESSAGE)]
        z = _root(a, self.method, self.num_iters, self.backward_method, checks, self.check_range)
        v = torch.flatten(_l2_normalize(_signed_sqrt(z, self.delta)), 1).to(x.dtype)
        return v if self.classifier is None else self.classifier(v)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, eps={self.eps}, method={self.method!r}, "
            f"num_iters={self.num_iters}, backward={self.backward_method!r}, delta={self.delta}, "
            f"check_range={self.check_range}"
        )
