"""Photos in requests: base64 in JSON or a multipart file part, decoded with a pixel cap."""

from __future__ import annotations

import base64
import binascii

from fastapi.exceptions import RequestValidationError
from PIL import Image

from newarrivals.indexer.encoders import UnreadableImageError, decode_photo

__all__ = ["decode_base64_photo", "decode_uploaded_photo"]


def _invalid(loc: tuple[str, ...], message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": None}]
    )


def decode_uploaded_photo(data: bytes, *, loc: tuple[str, ...], max_pixels: int) -> Image.Image:
    """Decode photo bytes; a field-level 422 with the reason when they are not an image."""
    if not data:
        raise _invalid(loc, "the photo is empty")
    try:
        return decode_photo(data, max_pixels=max_pixels)
    except UnreadableImageError as exc:
        raise _invalid(loc, str(exc)) from None


def decode_base64_photo(
    text: str | None, *, loc: tuple[str, ...], max_pixels: int
) -> tuple[bytes | None, Image.Image | None]:
    """The photo's bytes and decoded image, or ``(None, None)`` when none was sent."""
    if text is None or not text.strip():
        return None, None
    payload = text.strip()
    if payload.startswith("data:") and "," in payload:
        payload = payload.split(",", 1)[1]  # a data: URL
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(loc, f"not valid base64 ({exc})") from None
    return data, decode_uploaded_photo(data, loc=loc, max_pixels=max_pixels)
