"""One error type for everything a user can get wrong, one template, and the checks that raise it.

Messages are one line: ``"<file>: <problem>"`` for files (an in-memory image is named
``image``), and scikit-learn's wording for parameters:
``"The 'stride' parameter of featurize must be a positive int. Got -3 instead."``
The input edge (:mod:`brainrt.engine.plan`) and the few public kernel wrappers use these checks;
code behind them trusts its inputs.
"""

from __future__ import annotations

import contextlib

import numpy as np


class BrainrtError(ValueError):
    """A problem with the user's input: a file, a parameter or a bundle."""


class NoTissue(BrainrtError):
    """A slice with no cell to featurize (background everywhere, or a tissue mask that leaves none): refused for
    a slice of its own, off tissue for a slice of a volume (past the tissue's end)."""


#: Pixel types of the images brainrt reads and featurizes (float taken as [0, 1]).
PIXEL_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.float64))
PIXEL_TYPE_NAMES = "uint8, uint16, float32 or float64 (or int8, int16, int32)"
#: Signed pixel types read by shifting by the type's minimum (exact; int32: to float64 in [0, 1]): the
#: levels keep their order and spacing and the type's whole range maps onto the runtime's input range.
SIGNED_TYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


def first_line(exc):
    """The first line of an exception's message (at most 160 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else "unknown error"


@contextlib.contextmanager
def unreadable(path, what, hint=""):
    """Turn any failure but a :class:`BrainrtError` (a cut or damaged file: EOF, unpickling, decoding) into the
    one-line error naming ``path``: ``"<path>: <what> (<type>: <first line>)[; <hint>]"``."""
    try:
        yield
    except BrainrtError:
        raise
    except Exception as exc:  # the many types a damaged file raises
        raise file_error(path, f"{what} ({type(exc).__name__}: {first_line(exc)}){'; ' + hint if hint else ''}") \
            from None


def file_error(path, problem: str) -> BrainrtError:
    """Build the one-line error for a problem with a file (or the in-memory ``image``)."""
    return BrainrtError(f"{path}: {problem}")


def first_line(exc):
    """The first line of an exception's message (at most 160 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else "unknown error"


def param_error(name: str, owner: str, expected: str, got) -> BrainrtError:
    """Build the one-line error for a bad parameter (scikit-learn's template)."""
    return BrainrtError(f"The '{name}' parameter of {owner} must be {expected}. Got {got!r} instead.")


def check_positive_int(value, name: str, owner: str) -> int:
    """Validate a positive int parameter and return it."""
    if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
        raise param_error(name, owner, "a positive int", value)
    value = int(value)
    if value < 1:
        raise param_error(name, owner, "a positive int", value)
    return value


def check_float(value, name: str, owner: str, *, nonzero=False, low=None, high=None) -> float:
    """Validate a finite real scalar (nonzero, or in ``[low, high]``, if asked) and return it as float."""
    expected = ("a finite nonzero float" if nonzero else
                f"a float in [{low}, {high}]" if low is not None else "a finite float")
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise param_error(name, owner, expected, value)
    f = float(value)
    if not np.isfinite(f) or (nonzero and f == 0.0) or (low is not None and not low <= f <= high):
        raise param_error(name, owner, expected, value)
    return f


def as_unsigned(image) -> np.ndarray:
    """A signed integer image (:data:`SIGNED_TYPES`) as the unsigned type of its size, shifted by the type's
    minimum (int16 -32768..32767 -> uint16 0..65535: the sign bit flipped, exact); int32 -> float64 in
    [0, 1] (there is no uint32 pixel type). Any other image is returned as it is."""
    if image.dtype not in SIGNED_TYPES:
        return image
    if image.dtype == np.int32:
        return (image.astype(np.float64) + 2.0 ** 31) / (2.0 ** 32 - 1)
    unsigned = np.dtype(f"u{image.dtype.itemsize}")
    return image.view(unsigned) ^ unsigned.type(1 << (8 * image.dtype.itemsize - 1))


def check_image(image, name="image", *, finite=True, min_side=1, types=PIXEL_TYPES) -> np.ndarray:
    """A 2D grayscale array of a :data:`PIXEL_TYPES` type, at least ``min_side`` px a side
    (and without NaN or inf if ``finite``), or the one-line error naming ``name``. Signed integer
    images are returned as :func:`as_unsigned` maps them."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise file_error(name, f"expected a 2D grayscale image, got shape {image.shape}")
    if types is PIXEL_TYPES:
        image = as_unsigned(image)
    if image.dtype not in types:
        raise file_error(name, f"unsupported pixel type {image.dtype}; expected {PIXEL_TYPE_NAMES}")
    if min(image.shape) < min_side:
        raise file_error(name, f"image of {image.shape[0]} x {image.shape[1]} px is smaller than one "
                               f"{min_side} x {min_side} patch" if min_side > 1 else f"empty image of shape {image.shape}")
    if finite and image.dtype.kind == "f" and not np.isfinite(image).all():
        n = int((~np.isfinite(image)).sum())
        raise file_error(name, f"holds {n} NaN or infinite values")
    return image
