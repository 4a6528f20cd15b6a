"""Draw product photos with PIL.

Type is the silhouette, colour the fill and pattern an overlay, so an image encoder can learn
all three from the pixels; a little jitter keeps two photos of one kind apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from newarrivals.indexer.catalog.synth.vocabulary import (
    RGB,
    GarmentType,
    attribute_values,
    colour_named,
    garment_type,
)
from newarrivals.indexer.errors import CatalogError

__all__ = ["draw_product_image"]


def _jitter_colour(rgb: RGB, rng: np.random.Generator, sd: float) -> RGB:
    r, g, b = (int(np.clip(c + rng.normal(0.0, sd), 0, 255)) for c in rgb)
    return (r, g, b)


def _contrast(rgb: RGB) -> RGB:
    """A shade (for light fills) or tint (for dark fills) of the fill colour.

    Deriving the pattern colour from the fill keeps a patterned product's average colour
    close to its named colour, so colour stays learnable from the pixels.
    """
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if luminance > 140:
        r, g, b = (int(c * 0.35) for c in rgb)
    else:
        r, g, b = (int(c * 0.45 + 255 * 0.55) for c in rgb)
    return (r, g, b)


def _draw_pattern(
    draw: ImageDraw.ImageDraw, pattern: str, ink: RGB, size: int, rng: np.random.Generator
) -> None:
    """Draw the pattern over the whole canvas; the garment mask crops it later."""
    if pattern == "plain":
        return
    if pattern == "striped":
        period = size * rng.uniform(0.09, 0.13)
        # Ink stays a minority (here and below) so the fill remains the product's colour.
        band = period * 0.35
        vertical = rng.random() < 0.3
        pos = -rng.uniform(0.0, period)
        while pos < size:
            # PIL rectangles include both corners, hence the -1; integer corners because
            # Pillow refuses a float box whose rounded end falls before its start (small photos).
            start = round(pos)
            end = max(start, round(pos + band) - 1)
            box = (start, 0, end, size) if vertical else (0, start, size, end)
            draw.rectangle(box, fill=ink)
            pos += period
    elif pattern == "checked":
        # A windowpane grid of lines both ways: distinct from stripes, about a third ink.
        cell = size * rng.uniform(0.08, 0.11)
        line = max(1, round(cell * 0.2))
        x0, y0 = rng.uniform(0.0, cell, size=2)
        for k in range(int(size / cell) + 2):
            x, y = round(x0 + (k - 1) * cell), round(y0 + (k - 1) * cell)
            draw.rectangle((x, 0, x + line - 1, size), fill=ink)
            draw.rectangle((0, y, size, y + line - 1), fill=ink)
    elif pattern == "dotted":
        spacing = size * rng.uniform(0.09, 0.12)
        radius = spacing * 0.22
        x0, y0 = rng.uniform(0.0, spacing, size=2)
        for row in range(int(size / spacing) + 2):
            offset = spacing / 2 if row % 2 else 0.0
            for col in range(int(size / spacing) + 2):
                x, y = x0 + offset + col * spacing - spacing, y0 + row * spacing - spacing
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    elif pattern == "floral":
        petal = size * 0.028
        centre_ink = (245, 215, 60) if ink != (245, 215, 60) else (255, 255, 255)
        for _ in range(int(rng.integers(22, 30))):
            cx, cy = rng.uniform(0.0, size, size=2)
            for k in range(5):
                angle = 2 * math.pi * k / 5
                px, py = cx + petal * math.cos(angle), cy + petal * math.sin(angle)
                draw.ellipse((px - petal, py - petal, px + petal, py + petal), fill=ink)
            draw.ellipse((cx - petal * 0.6, cy - petal * 0.6, cx + petal * 0.6, cy + petal * 0.6),
                         fill=centre_ink)  # fmt: skip
    elif pattern == "animal":
        # Irregular rosettes of random size and aspect, unlike the regular dot grid.
        for _ in range(int(rng.integers(35, 50))):
            cx, cy = rng.uniform(0.0, size, size=2)
            rx, ry = size * rng.uniform(0.02, 0.05), size * rng.uniform(0.015, 0.035)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=ink)
    else:
        raise CatalogError(
            f"Unknown pattern {pattern!r}; use one of {list(attribute_values('pattern'))}."
        )


def _draw_mask(garment: GarmentType, size: int, rng: np.random.Generator) -> Image.Image:
    """The garment silhouette as an ``L`` mask, with random placement and scale."""
    scale = rng.uniform(0.82, 1.0)
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04, size=2)

    def to_px(coords: tuple[float, ...]) -> list[float]:
        out = []
        for i, c in enumerate(coords):
            centre = cx if i % 2 == 0 else cy
            out.append((centre + (c - 0.5) * scale) * size)
        return out

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for shape in garment.shapes:
        fill = 0 if shape.cut else 255
        xy = to_px(shape.coords)
        if shape.kind == "polygon":
            draw.polygon(xy, fill=fill)
        elif shape.kind == "ellipse":
            draw.ellipse(xy, fill=fill)
        elif shape.kind == "rectangle":
            draw.rectangle(xy, fill=fill)
        else:
            draw.chord(xy, shape.angles[0], shape.angles[1], fill=fill)
    return mask


def draw_product_image(
    attributes: Mapping[str, str], rng: np.random.Generator, size: int = 96
) -> Image.Image:
    """Draw a product photo: silhouette from type, fill from colour, overlay from pattern.

    Position, scale and colours are jittered with ``rng`` so no two photos are identical,
    yet type, colour and pattern stay recognisable from the pixels.

    Args:
        attributes: At least ``type``, ``colour`` and ``pattern`` (see ``ATTRIBUTE_VALUES``).
        rng: The random source for the jitter.
        size: Side of the square RGB image in pixels.

    Returns:
        An RGB image of ``size`` x ``size`` on a light background.

    Raises:
        CatalogError: if an attribute value is unknown.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> draw_product_image({"type": "cap", "colour": "red", "pattern": "plain"}, rng).size
        (96, 96)
    """
    for key in ("type", "colour", "pattern"):
        if key not in attributes:
            raise CatalogError(
                f"attributes must include {key!r} to draw a photo, got keys {sorted(attributes)}."
            )
    garment = garment_type(attributes["type"])
    fill = _jitter_colour(colour_named(attributes["colour"]).rgb, rng, 6.0)
    grey = int(rng.integers(222, 240))
    background = Image.new("RGB", (size, size), _jitter_colour((grey, grey, grey - 4), rng, 3.0))

    cloth = Image.new("RGB", (size, size), fill)
    _draw_pattern(ImageDraw.Draw(cloth), attributes["pattern"], _contrast(fill), size, rng)
    mask = _draw_mask(garment, size, rng)
    photo = Image.composite(cloth, background, mask)
    # A dark outline keeps white and beige garments visible on the light background.
    outline = mask.filter(ImageFilter.FIND_EDGES)
    photo.paste((70, 70, 70), mask=outline)
    return photo
