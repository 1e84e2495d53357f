"""The papers' numbers that a run on real data is printed beside (VGG-16, 448x448; Lin & Maji,
BMVC 2017; Li et al., CVPR 2018), and which of them belong to an image folder."""

#: Test accuracy in %: improved B-CNN (the IBP head), the original B-CNN (bilinear, no matrix
#: root) and iSQRT-COV.
PAPER_ACCURACY = {
    "cub": {"ibp": 85.8, "bilinear_no_sqrtm": 84.0, "isqrt-cov": 87.2},
    "cars": {"ibp": 92.0, "bilinear_no_sqrtm": 90.6, "isqrt-cov": 92.5},
    "aircraft": {"ibp": 88.5, "bilinear_no_sqrtm": 86.9, "isqrt-cov": 90.0},
}
#: Words in an image folder's name that tell which paper data set it holds.
_HINTS = {"cub": ("cub", "bird"), "cars": ("car",), "aircraft": ("aircraft", "fgvc")}


def paper_dataset_key(dataset_name: str, override: str | None = None) -> str | None:
    """The PAPER_ACCURACY key of a data set: `override` (--paper-dataset), or guessed from its
    name, or None."""
    if override:
        return override
    name = dataset_name.lower()
    return next((key for key, hints in _HINTS.items() if any(h in name for h in hints)), None)


def paper_accuracy(dataset_name: str, override: str | None = None) -> dict[str, float]:
    """The papers' numbers (%) for a data set by configuration; empty for other data."""
    return PAPER_ACCURACY.get(paper_dataset_key(dataset_name, override) or "", {})
