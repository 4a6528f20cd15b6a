"""NumPy array type aliases, named by dtype, that every package annotates with.

Vectors in an index are float32 (what FAISS stores); scores, metrics and features are
float64; product positions and token ids are int64.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["BoolArray", "F32Array", "F64Array", "I64Array"]

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
