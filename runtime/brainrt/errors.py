"""One error type for everything a user can get wrong.

Messages follow one template so that the CLI can print them as a single line:
``"<file>: <problem>"`` for files, and scikit-learn's wording for parameters:
``"The 'stride' parameter of featurize must be a positive int. Got -3 instead."``
"""

from __future__ import annotations


class BrainrtError(ValueError):
    """A problem with the user's input: a file, a parameter or a bundle."""


def file_error(path, problem: str) -> BrainrtError:
    """Build the one-line error for a problem with a file."""
    return BrainrtError(f"{path}: {problem}")


def param_error(name: str, owner: str, expected: str, got) -> BrainrtError:
    """Build the one-line error for a bad parameter (scikit-learn's template)."""
    return BrainrtError(f"The '{name}' parameter of {owner} must be {expected}. Got {got!r} instead.")


def check_positive_int(value, name: str, owner: str) -> int:
    """Validate a positive int parameter at the edge and return it."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__") and not isinstance(value, float)
    ):
        raise param_error(name, owner, "a positive int", value)
    value = int(value)
    if value < 1:
        raise param_error(name, owner, "a positive int", value)
    return value
