"""ONNX Runtime copies of the encoders, so a small refresh does not pay for importing torch.

A 1%-changed refresh spends most of its time importing torch, sentence-transformers and
open_clip (several seconds) before it encodes a hundred products in a fraction of a second.
After a build has loaded a torch encoder, :func:`export_text` / :func:`export_image` write an
ONNX copy of it into the embedding cache (``<cache>/onnx/<sha256(encoder id)[:16]>/``) and
keep it only if it reproduces the torch vectors on a probe of real inputs. Later builds on
the CPU encode with the copy: ``onnxruntime`` and ``tokenizers`` import in a fraction of a
second. The copy has the same ``encoder_id`` as its source, because its vectors are the
same up to float rounding (checked at export), so both share one embedding cache.

The photo preprocessing is re-implemented in PIL + NumPy from the torchvision pipeline of
the tower (resize the short side, centre crop, scale, normalise); a pipeline with any other
step is not exported, and the torch encoder stays in use.
"""

from __future__ import annotations

from newarrivals.indexer.encoders.onnx_encoders.common import MODEL_FILE, export_folder
from newarrivals.indexer.encoders.onnx_encoders.image import (
    ImageRecipe,
    OnnxImageEncoder,
    export_image,
    image_recipe,
    load_image_export,
)
from newarrivals.indexer.encoders.onnx_encoders.text import (
    OnnxTextEncoder,
    export_text,
    load_text_export,
)

__all__ = [
    "MODEL_FILE",
    "ImageRecipe",
    "OnnxImageEncoder",
    "OnnxTextEncoder",
    "export_folder",
    "export_image",
    "export_text",
    "image_recipe",
    "load_image_export",
    "load_text_export",
]
