"""Serving without MLflow: requests (base64 images, arrays) in, validated patch batches out.

Pure on purpose: the pyfunc model in `histomlf.tracking.pyfunc` wraps these functions, and any
other server (or a batch job) can reuse them without importing MLflow.
"""

from histomlf.serving.inputs import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PIXELS,
    InvalidPatchInput,
    encode_png_base64,
    images_from_arrays,
    images_from_base64,
    patch_from_bytes,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MAX_PIXELS",
    "InvalidPatchInput",
    "encode_png_base64",
    "images_from_arrays",
    "images_from_base64",
    "patch_from_bytes",
]
