"""Reading legacy pickles without running code from them: numpy arrays, containers, numbers and strings.

Used for data files only (MMDetection3D info pickles, Semantic Abstraction's demo frames). Checkpoints
are never read this way: they are safetensors, and legacy torch files go through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

__all__ = ["NumpyUnpickler", "load_numpy_pickle"]


class NumpyUnpickler(pickle.Unpickler):
    """Unpickler that resolves numpy arrays / dtypes / scalars and plain containers, and refuses every
    other global (``pickle.UnpicklingError`` naming it)."""

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
        ("_codecs", "encode"),  # numpy arrays pickled with protocol 2 store their bytes this way
    })

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data pickle")


def load_numpy_pickle(path: str | Path, what: str = "data pickle"):
    """Load ``path`` with :class:`NumpyUnpickler`.

    Args:
        path: the pickle file.
        what: what the file is, for the error message.

    Returns:
        The unpickled object (dicts, lists, numpy arrays, numbers, strings).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, not a pickle, or names a global outside the allowed set;
            the message names the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return NumpyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable {what}: {exc}") from exc
