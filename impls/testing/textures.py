"""Coloured Gaussian textures whose classes differ only in second-order statistics: the images
`ibp-check model` probes a model with, and the `synthetic` data set of the accuracy reproduction
(`bench.accuracy.data`). A per-sample second-order model tells the classes apart; first-order
statistics carry nothing of them.

Images are float32 RGB in [0, 1], channels-last (N, H, W, 3).
"""

from typing import Any

import numpy as np

from impls.testing import founding_question as question

#: As many classes as the founding question's softmax has.
SYNTHETIC_NUM_CLASSES = question.NUM_CLASSES
#: Every synthetic image has exactly this per-channel mean and standard deviation (before the clip
#: to [0, 1], which touches pixels beyond 5 standard deviations only).
SYNTHETIC_MEAN, SYNTHETIC_STD = 0.5, 0.1

# Orthonormal colour axes: luminance and the two colour-opponent axes.
_LUMINANCE = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)
_RED_GREEN = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
_YELLOW_BLUE = np.array([1.0, 1.0, -2.0]) / np.sqrt(6)

# Radial centre and width (cycles per pixel) of the band-pass spectra, angular concentration of
# the oriented ones, and the per-image nuisance: amplitude (log-normal) and orientation jitter.
_ORIENTED_FREQUENCY, _ORIENTED_BANDWIDTH, _ORIENTATION_CONCENTRATION = 0.2, 0.06, 4.0
_LUMINANCE_FREQUENCY, _LUMINANCE_BANDWIDTH = 0.1, 0.08
_AMPLITUDE_JITTER, _ORIENTATION_JITTER = 0.25, np.deg2rad(5.0)
_SECOND_COMPONENT_AMPLITUDE = 0.6


def _class_parameters(label: Any) -> tuple[Any, Any]:
    """Orientation of the first oriented component and the angle of its colour axis.

    Orientations step by 180/7 degrees; colour angles are scrambled (3c mod 7) so that classes with
    neighbouring orientations have distant colour axes.
    """
    orientation = label * np.pi / SYNTHETIC_NUM_CLASSES
    colour_angle = (3 * label % SYNTHETIC_NUM_CLASSES) * np.pi / SYNTHETIC_NUM_CLASSES
    return orientation, colour_angle


def _unit_variance(spectrum: np.ndarray) -> np.ndarray:
    """Scale a filter so that white noise of unit variance filtered by it has unit variance."""
    return spectrum / np.sqrt(np.mean(spectrum**2, axis=(-2, -1), keepdims=True))


def _band_pass(
    frequency_x: np.ndarray, frequency_y: np.ndarray, centre: float, bandwidth: float
) -> np.ndarray:
    radius = np.hypot(frequency_x, frequency_y)
    return np.exp(-((radius - centre) ** 2) / (2 * bandwidth**2))


def _oriented_band_pass(
    frequency_x: np.ndarray, frequency_y: np.ndarray, orientations: np.ndarray
) -> np.ndarray:
    """Band-pass noise whose stripes run along `orientations` (one per image, radians)."""
    # Stripes along angle t have their spectral energy at angle t + 90 degrees; cos(2 (a - t))
    # treats a and a + 180 degrees alike, which keeps the filtered field real.
    angle = np.arctan2(frequency_y, frequency_x)[None]
    across = orientations[:, None, None] + np.pi / 2
    angular = np.exp(_ORIENTATION_CONCENTRATION * (np.cos(2 * (angle - across)) - 1))
    radial = _band_pass(frequency_x, frequency_y, _ORIENTED_FREQUENCY, _ORIENTED_BANDWIDTH)
    return _unit_variance(radial[None] * angular)


def _standardise_per_image(images: np.ndarray) -> np.ndarray:
    """Give every channel of every image the same mean and standard deviation."""
    mean = images.mean(axis=(1, 2), keepdims=True)
    std = images.std(axis=(1, 2), keepdims=True)
    standardised = SYNTHETIC_MEAN + SYNTHETIC_STD * (images - mean) / std
    return np.clip(standardised, 0.0, 1.0)


def synthetic_images(labels: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured Gaussian textures whose classes differ only in second-order statistics.

    Each image is the sum of three independent Gaussian random fields, each with one colour axis:
    isotropic band-pass luminance noise (the same for every class), and two band-pass stripe
    textures at right angles, coloured along two orthogonal colour-opponent axes, with unequal
    amplitudes. The class sets the stripe orientation and the colour axes, hence the spatial
    autocorrelation and the cross-channel covariance, nothing else: every channel of every image
    is standardised to the same mean and standard deviation, so per-channel first-order statistics
    carry no information about the class. Amplitudes and orientation get per-image jitter.
    """
    labels = np.asarray(labels)
    count = len(labels)
    frequencies = np.fft.fftfreq(image_size)
    frequency_x, frequency_y = np.meshgrid(frequencies, frequencies)

    orientation, colour_angle = _class_parameters(labels)
    orientation = orientation + rng.normal(0.0, _ORIENTATION_JITTER, count)
    first_colour = np.cos(colour_angle)[:, None] * _RED_GREEN + np.sin(colour_angle)[:, None] * (
        _YELLOW_BLUE
    )
    second_colour = -np.sin(colour_angle)[:, None] * _RED_GREEN + np.cos(colour_angle)[:, None] * (
        _YELLOW_BLUE
    )

    luminance = _unit_variance(
        _band_pass(frequency_x, frequency_y, _LUMINANCE_FREQUENCY, _LUMINANCE_BANDWIDTH)
    )
    spectra = np.stack(
        [
            np.broadcast_to(luminance, (count, image_size, image_size)),
            _oriented_band_pass(frequency_x, frequency_y, orientation),
            _oriented_band_pass(frequency_x, frequency_y, orientation + np.pi / 2),
        ],
        axis=1,
    )
    noise = rng.standard_normal((count, 3, image_size, image_size))
    fields = np.real(np.fft.ifft2(np.fft.fft2(noise) * spectra))
    amplitudes = np.array([1.0, 1.0, _SECOND_COMPONENT_AMPLITUDE]) * rng.lognormal(
        0.0, _AMPLITUDE_JITTER, (count, 3)
    )
    colours = np.stack(
        [np.broadcast_to(_LUMINANCE, (count, 3)), first_colour, second_colour], axis=1
    )  # (image, component, channel)
    images = np.einsum("nk,nkc,nkhw->nhwc", amplitudes, colours, fields)
    return _standardise_per_image(images).astype(np.float32)


def class_name(label: int) -> str:
    """What tells class `label` apart, in words: the orientation of its stripes."""
    return f"stripes {round(np.rad2deg(_class_parameters(label)[0]))} deg"
