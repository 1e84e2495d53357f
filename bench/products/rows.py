"""One row of the products table: what the command measures and the renderer reads."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ProductsRow:
    """One method's products at the fewest iterations reaching the target, on one size."""

    channels: int
    batch: int
    dtype: str
    method: str
    backward: str | None
    #: No eigendecomposition anywhere: the products are the whole cost.
    matmul_only: bool
    #: The fewest iterations that reach the target (None: not iterative, or never reached in
    #: the scanned range, then the counts and errors are those of the most iterations scanned).
    iterations: int | None
    meets_target: bool
    forward_products: int
    backward_products: int
    products: int
    forward_error: float
    backward_error: float

    @property
    def worst_error(self) -> float:
        return max(self.forward_error, self.backward_error)
