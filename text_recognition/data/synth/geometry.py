"""Geometry for the realistic engine, applied to the text masks in one Pillow resampling: rotation, shear,
perspective (keystone), curved baselines and elastic distortion.

Rotation, shear and perspective make one homography; a curve or elastic distortion adds a displacement in the output
plane, and the whole map is then sampled on a mesh of small quads (``Image.MESH``), which Pillow maps bilinearly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def warp(image: Image.Image, rng: np.random.Generator, p: dict[str, float], text_height: float) -> Image.Image:
    """``image`` (text masks on a black canvas) rotated, sheared, in perspective, curved and distorted, each with its
    probability in ``p``; the canvas grows to hold the result."""
    width, height = image.size
    corners = np.array([[0, 0], [0, height], [width, height], [width, 0]], dtype=np.float64)  # UL, LL, LR, UR
    target = corners.copy()
    changed = False
    if rng.random() < p["perspective"]:
        changed = True
        right = rng.uniform(0.75, 1.25)  # the right edge's height over the left's (a sign seen from the side)
        top = rng.uniform(0.9, 1.1)  # the top edge's width over the bottom's (seen from below or above)
        middle = height / 2
        target[2:, 1] = middle + (target[2:, 1] - middle) * right
        target[[0, 3], 0] = width / 2 + (target[[0, 3], 0] - width / 2) * top
        target += rng.normal(0, 0.03 * text_height, target.shape)
    if rng.random() < p["shear"]:
        changed = True
        target[[0, 3], 0] += rng.uniform(-0.35, 0.35) * height  # slanted, as italic or a tilted camera
    if rng.random() < p["rotation"]:
        changed = True
        angle = np.deg2rad(np.clip(rng.normal(0, 5), -20, 20))
        centre = target.mean(axis=0)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        target = (target - centre) @ rotation.T + centre
    curve = rng.random() < p["curve"]
    elastic = rng.random() < p["elastic"]
    if not (changed or curve or elastic):
        return image
    target -= target.min(axis=0)
    out_w, out_h = (int(np.ceil(v)) + 1 for v in target.max(axis=0))
    coefficients = _homography(target, corners)  # output plane -> source plane

    if not (curve or elastic):
        return image.transform((out_w, out_h), Image.Transform.PERSPECTIVE, tuple(coefficients),
                               resample=Image.Resampling.BILINEAR)  # fmt: skip

    cells_x = max(2, int(out_w / max(4.0, text_height / 1.5)))
    cells_y = 2
    us = np.linspace(0, out_w, cells_x + 1)
    offset = np.zeros(cells_x + 1)
    if curve:  # an arc or a wave along the text, up to a third of its height
        amplitude = rng.uniform(0.12, 0.35) * text_height * rng.choice([-1, 1])
        x = us / out_w * 2 - 1
        offset = (
            amplitude * (x**2)
            if rng.random() < 0.6
            else amplitude * np.sin(np.pi * (x * rng.uniform(0.5, 1.2) + rng.uniform(0, 2)))
        )
        offset -= offset.min()
    grow = int(np.ceil(offset.max()))
    out_h += grow
    vs = np.linspace(0, out_h, cells_y + 1)
    u, v = np.meshgrid(us, vs)
    v = v - offset[None, :]
    if elastic:
        sigma = rng.uniform(0.02, 0.06) * text_height
        u = u + _smooth_field(rng, (cells_y + 1, cells_x + 1), sigma)
        v = v + _smooth_field(rng, (cells_y + 1, cells_x + 1), sigma)
    a, b, c, d, e, f, g, h = coefficients
    denominator = g * u + h * v + 1
    xs, ys = (a * u + b * v + c) / denominator, (d * u + e * v + f) / denominator
    mesh = []
    for j in range(cells_y):
        for i in range(cells_x):
            box = (int(us[i]), int(vs[j]), int(us[i + 1]), int(vs[j + 1]))
            quad = (xs[j, i], ys[j, i], xs[j + 1, i], ys[j + 1, i], xs[j + 1, i + 1], ys[j + 1, i + 1],
                    xs[j, i + 1], ys[j, i + 1])  # fmt: skip
            mesh.append((box, tuple(float(q) for q in quad)))
    return image.transform((out_w, out_h), Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR)


def _homography(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 8 coefficients of Pillow's PERSPECTIVE transform mapping the 4 ``source`` points onto ``target``."""
    rows, values = [], []
    for (u, v), (x, y) in zip(source, target, strict=True):
        rows.append([u, v, 1, 0, 0, 0, -x * u, -x * v])
        rows.append([0, 0, 0, u, v, 1, -y * u, -y * v])
        values += [x, y]
    return np.linalg.solve(np.asarray(rows), np.asarray(values))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """A smooth random displacement on the mesh vertices: coarse noise, bilinearly stretched."""
    coarse = rng.normal(0, sigma, (2, max(2, shape[1] // 4))).astype(np.float32)
    field = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(field, dtype=np.float64)
