"""Synthetic chest radiographs ("phantoms") for the offline ``quick`` profile.

A phantom is a frontal (PA) chest X-ray drawn from a simple anatomical model, with the
masks that real data sets lack or only partly have: both lungs and, for the TB class,
every lesion. X-ray convention: bright where dense (bone, soft tissue), dark where the
lungs hold air.

How an image is built (``make_phantom``):

1. *Pose*: a small random shift, rotation and scale maps every pixel to canonical body
   coordinates ``(u, v)`` in about [-1, 1] (``u`` to the image's right, ``v`` down).
   All anatomy is defined there, so it moves with the pose and looks the same at any
   pixel size (64 to 512 px).
2. *Anatomy* (per-image random proportions): torso silhouette with neck and shoulders,
   two lungs (the patient's right lung, on the image's left, wider and shorter; the
   left one narrower with the heart's notch), heart, aortic knob, mediastinum, spine
   with vertebrae, trachea, posterior and faint anterior ribs, clavicles, humeral heads,
   diaphragm domes, a gastric air bubble, hilar shadows and branching vessels (benign
   brightness inside the lungs of both classes).
3. *Lesions* (label 1 only), mostly in the upper third of the lungs, in one lung or
   both: nodules (with satellite clusters), patchy consolidations and cavities (bright
   wall, darker centre). ``difficulty`` 0 gives many, large, high-contrast lesions;
   1 gives few, small, faint ones.
4. *Exposure*: every structure adds attenuation; the image is ``1 - exp(-k A)``
   (which hides ribs behind the dense mediastinum, as in a real film), then a smooth
   exposure gradient, window, gamma, a little blur and noise.

``write_phantom_sets`` writes phantoms in the official NLM folder layouts (Shenzhen:
8-bit PNG and one combined lung mask; Montgomery: 16-bit PNG with 12-bit values and
left/right masks) plus a ``LesionMask`` folder per set, so that they flow through the
same loaders as the real data.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

GENERATOR_VERSION = 1
DEFAULT_COUNTS = {"shenzhen": 160, "montgomery": 80}
MANIFEST = "PHANTOM.json"

# where each set goes: top folder, file-name prefix
_SETS = {
    "shenzhen": ("ChinaSet_AllFiles", "CHNCXR"),
    "montgomery": ("MontgomerySet", "MCUCXR"),
}


@dataclass
class Phantom:
    """One synthetic chest X-ray with its ground truth."""

    image: np.ndarray  # float32 (H, W) in [0, 1]
    left_lung: np.ndarray  # bool (H, W): the patient's left lung (image's right side)
    right_lung: np.ndarray  # bool (H, W): the patient's right lung (image's left side)
    lesions: np.ndarray  # bool (H, W): union of lesion masks, inside the lungs
    label: int  # 0 normal, 1 TB


# --------------------------------------------------------------------------- geometry
def _smoothstep(e0: float, e1: float, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _draw_anatomy(rng: np.random.Generator) -> dict:
    """Per-image proportions and pose, all in canonical units."""
    u = rng.uniform
    body_w = u(0.86, 0.98)
    a = {
        # pose: image point p = scale * R(rot) * canonical + shift
        "shift": rng.normal(0.0, 0.03, 2).clip(-0.07, 0.07),
        "rot": np.deg2rad(rng.normal(0.0, 2.5)).clip(-0.1, 0.1),
        "scale": u(0.93, 1.05),
        # torso
        "body_w": body_w,
        "waist_w": body_w - u(0.0, 0.08),
        "neck_w": u(0.2, 0.27),
        "shoulder_v": u(-0.8, -0.68),
        "shoulder_w": u(1.02, 1.15),
        # heart (ellipse tilted down towards the image's right) and aortic knob
        "heart_c": (u(0.07, 0.14), u(0.26, 0.34)),
        "heart_r": (u(0.3, 0.37), u(0.2, 0.25)),
        "heart_tilt": np.deg2rad(u(20, 35)),
        "aorta_c": (u(0.07, 0.1), u(-0.36, -0.28)),
        "aorta_r": (u(0.06, 0.08), u(0.08, 0.1)),
        # spine, ribs, clavicles
        "spine_w": u(0.07, 0.085),
        "vert_period": u(0.085, 0.1),
        "vert_phase": u(0, 1),
        "rib_v0": u(-0.7, -0.62),
        "rib_spacing": u(0.1, 0.118),
        "rib_spread": u(0.03, 0.07),
        "rib_slope": u(0.0, 0.12),
        "rib_curve": u(0.45, 0.65),
        "rib_w": u(0.015, 0.019),
        "rib_amp": u(0.08, 0.13),
        "clav_v": u(-0.62, -0.52),
        "clav_slope": u(0.14, 0.24),
        # exposure
        "k": u(1.2, 1.5),
        "gamma": np.exp(rng.normal(0.0, 0.12)),
        "window_lo": u(0.02, 0.08),
        "window_hi": u(0.86, 0.95),
        "noise": u(0.008, 0.022),
        "grad": rng.normal(0.0, 0.05, 3),
        "bubble": rng.random() < 0.6,
        "bubble_c": (u(0.28, 0.45), u(0.0, 0.08)),
        "bubble_r": (u(0.06, 0.1), u(0.035, 0.05)),
    }
    insp = rng.normal(0.0, 0.035)  # depth of inspiration moves both domes
    # lungs: "d" is the distance from the midline towards that lung's side
    a["lungs"] = {}
    for side, (base, dome, lat_in, mslope) in {-1: (0.46, 0.22, 0.09, 0.04),
                                                +1: (0.52, 0.3, 0.13, 0.16)}.items():
        lat_d = body_w - u(lat_in - 0.02, lat_in + 0.03)
        a["lungs"][side] = {
            "apex_v": u(-0.78, -0.68),
            "apex_d": u(0.3, 0.37),
            "med_d": u(0.11, 0.15),
            "med_slope": mslope * u(0.7, 1.3),
            "lat_d": lat_d,
            "s_lat": u(0.5, 0.7),
            "s_med": u(0.25, 0.4),
            "base_v": base + insp + u(-0.03, 0.03),
            "dome_v": dome + insp + u(-0.03, 0.03),
            "dome_d": u(0.3, 0.45),
        }
    return a


def _canonical_grid(size: int, a: dict) -> tuple[np.ndarray, np.ndarray]:
    """Canonical body coordinates (u, v) of every pixel centre."""
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(c, c)  # x to the right, y down
    x = (x - a["shift"][0]) / a["scale"]
    y = (y - a["shift"][1]) / a["scale"]
    cr, sr = np.cos(a["rot"]), np.sin(a["rot"])
    return cr * x + sr * y, -sr * x + cr * y


def _to_pixel(u, v, a: dict, size: int) -> tuple[float, float]:
    """Inverse of ``_canonical_grid`` for one point: (row, col) in pixels."""
    cr, sr = np.cos(a["rot"]), np.sin(a["rot"])
    x = (cr * u - sr * v) * a["scale"] + a["shift"][0]
    y = (sr * u + cr * v) * a["scale"] + a["shift"][1]
    return (y + 1.0) / 2.0 * size - 0.5, (x + 1.0) / 2.0 * size - 0.5


def _ellipse(u, v, c, r, tilt=0.0):
    """Normalised squared radius of a tilted ellipse (< 1 inside)."""
    du, dv = u - c[0], v - c[1]
    ct, st = np.cos(tilt), np.sin(tilt)
    p, q = ct * du + st * dv, -st * du + ct * dv
    return (p / r[0]) ** 2 + (q / r[1]) ** 2


def _heart_q(u, v, a):
    return _ellipse(u, v, a["heart_c"], a["heart_r"], a["heart_tilt"])


def _lung_inside(u, v, a: dict, side: int, heart_q=None):
    """True inside the lung of ``side`` (-1: patient's right = image's left; +1: left)."""
    L = a["lungs"][side]
    d = side * u
    s = (v - L["apex_v"]) / (L["base_v"] - L["apex_v"])
    sl = np.clip(s / L["s_lat"], 0.0, 1.0)
    lateral = (L["apex_d"] + (L["lat_d"] - L["apex_d"]) * np.sqrt(1.0 - (1.0 - sl) ** 2)
               + 0.04 * np.clip(s - L["s_lat"], 0.0, None))
    sm = np.clip(s / L["s_med"], 0.0, 1.0)
    medial = (L["apex_d"] - (L["apex_d"] - L["med_d"]) * np.sqrt(1.0 - (1.0 - sm) ** 2)
              + L["med_slope"] * np.clip(s - L["s_med"], 0.0, None))
    t = (d - L["dome_d"]) / (L["lat_d"] - L["dome_d"])
    dome = L["dome_v"] + (L["base_v"] - L["dome_v"]) * t * t
    inside = (s >= 0.0) & (d >= medial) & (d <= lateral) & (v <= dome)
    inside &= (_heart_q(u, v, a) if heart_q is None else heart_q) > 1.0
    if side == 1:
        inside &= _ellipse(u, v, a["aorta_c"], a["aorta_r"]) > 1.0
    return inside


def _lung_height_fraction(v, a: dict, side: int):
    L = a["lungs"][side]
    return (v - L["apex_v"]) / (L["base_v"] - L["apex_v"])


def _body_halfwidth(v, a: dict):
    """Half-width of the body silhouette at height ``v`` (neck, shoulders, chest, waist)."""
    sh = _smoothstep(-1.06, a["shoulder_v"], v)
    top = a["neck_w"] + (a["shoulder_w"] - a["neck_w"]) * sh
    chest = a["body_w"] + (a["waist_w"] - a["body_w"]) * _smoothstep(0.2, 1.1, v)
    # below the shoulders the arms part from the chest wall
    blend = _smoothstep(a["shoulder_v"] + 0.05, a["shoulder_v"] + 0.45, v)
    return top * (1.0 - blend) + chest * blend


# --------------------------------------------------------------------------- anatomy
def _window(a: dict, size: int, cu: float, cv: float, radius: float):
    """Pixel slices covering the canonical disc of ``radius`` around (cu, cv)."""
    row, col = _to_pixel(cu, cv, a, size)
    r = radius * a["scale"] * size / 2.0 + 2.0
    r0, r1 = int(max(0, np.floor(row - r))), int(min(size, np.ceil(row + r) + 1))
    c0, c1 = int(max(0, np.floor(col - r))), int(min(size, np.ceil(col + r) + 1))
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _pow6(x):
    x2 = x * x
    return x2 * x2 * x2


def _add_ellipse(A, u, v, a: dict, c, r, amp: float, edge=(1.2, 0.8)) -> None:
    """Add ``amp`` inside an ellipse (soft edge between normalised radii ``edge``), in place."""
    sl = _window(a, A.shape[0], c[0], c[1], max(r) * 1.2)
    A[sl] += amp * _smoothstep(edge[0], edge[1], _ellipse(u[sl], v[sl], c, r))


def _ribs(u, v, a: dict, wb, px: float):
    """Posterior ribs (arches from the spine, curving down laterally) and faint anterior ones.

    Ribs never overlap, so each pixel only looks at its nearest rib of each kind.
    """
    out = np.zeros_like(u)
    v0, sp, spread = a["rib_v0"], a["rib_spacing"], a["rib_spread"]
    for side in (-1, 1):
        d = side * u
        lat = wb * 0.97
        along = _smoothstep(0.04, 0.1, d) * (1.0 - _smoothstep(lat - 0.06, lat, d))
        along = along * (d > 0)
        base_v = a["lungs"][side]["base_v"]
        along = along * (0.15 + 0.85 * (1.0 - _smoothstep(base_v - 0.05, base_v + 0.2, v)))
        # posterior ribs: centre of rib k at v = v0 + sp*k*(1 + spread*k) + base(d)
        w_ = v - (a["rib_slope"] * d + a["rib_curve"] * d * d * d) - v0
        kc = (-1.0 + np.sqrt(np.maximum(1.0 + 4.0 * spread * w_ / sp, 0.0))) / (2.0 * spread)
        k = np.clip(np.round(kc), 0, 10)
        vk = sp * k * (1.0 + spread * k)
        w = a["rib_w"] * (1.0 + 0.04 * k) + 0.5 * px
        dist = (w_ - vk) / w
        rim = (np.abs(dist) - 0.85) / 0.25
        out += a["rib_amp"] * along * (0.7 * np.exp(-_pow6(dist)) + 0.35 * np.exp(-rim * rim))
        # anterior ribs: descend towards the midline, fade before the cartilage
        fade = _smoothstep(0.3, 0.5, d) * (1.0 - _smoothstep(lat - 0.08, lat, d))
        dd = d - 0.85
        w_ = v + 0.38 * dd - 0.25 * dd * dd + 0.62
        spa = sp * 1.55
        k = np.clip(np.round(w_ / spa), 0, 5)
        dist = (w_ - k * spa) / (a["rib_w"] * 1.2 + 0.5 * px)
        dist2 = dist * dist
        out += 0.5 * a["rib_amp"] * fade * np.exp(-dist2 * dist2)
    return out


def _clavicles(u, v, a: dict, px: float):
    out = np.zeros_like(u)
    for side in (-1, 1):
        d = side * u
        t = (d - 0.08) / 0.7
        tc = np.clip(t, 0, 1)
        centre = a["clav_v"] - a["clav_slope"] * t + 0.035 * np.sin(np.pi * tc * 2.0)
        w = 0.028 + 0.008 * tc + 0.5 * px
        dist = (v - centre) / w
        along = _smoothstep(0.0, 0.05, t) * (1.0 - _smoothstep(0.95, 1.08, t))
        rim = (np.abs(dist) - 0.85) / 0.25
        out += 0.26 * along * (0.75 * np.exp(-_pow6(dist)) + 0.3 * np.exp(-rim * rim))
    return out


def _spine(u, v, a: dict):
    half = a["spine_w"]
    across = np.exp(-_pow6(u / half))
    phase = (v / a["vert_period"] + a["vert_phase"]) % 1.0
    discs = 1.0 - 0.35 * np.exp(-((phase - 0.5) / 0.09) ** 2)  # darker disc spaces
    pedicles = sum(np.exp(-(((u - s * 0.7 * half) / (0.22 * half)) ** 2
                            + ((phase - 0.3) / 0.14) ** 2)) for s in (-1, 1))
    top = _smoothstep(-1.1, -0.9, v)
    return top * (0.16 * across * discs + 0.08 * pedicles * across)


def _vessels(u, v, a: dict, rng: np.random.Generator, px: float):
    """Hilar shadows and branching pulmonary vessels (benign, both classes)."""
    size = u.shape[0]
    out = np.zeros_like(u)
    for side in (-1, 1):
        hx = side * rng.uniform(0.15, 0.2)
        hy = rng.uniform(-0.05, 0.08)
        sl = _window(a, size, hx, hy, 0.45)
        out[sl] += rng.uniform(0.06, 0.1) * np.exp(-(((u[sl] - hx) / 0.06) ** 2 + ((v[sl] - hy) / 0.13) ** 2))
        n = int(rng.integers(7, 11))
        angles = np.sort(rng.uniform(-1.25, 1.35, n))  # 0: straight out, +: downwards
        for ang in angles:
            x0, y0 = hx + rng.normal(0, 0.025), hy + rng.normal(0, 0.04)
            stems = [(x0, y0, ang, rng.uniform(0.35, 0.6), rng.uniform(0.013, 0.019))]
            # one branch off each vessel
            f = rng.uniform(0.3, 0.55)
            bang = ang + rng.choice([-1, 1]) * rng.uniform(0.3, 0.6)
            L0 = stems[0][3]
            stems.append((x0 + side * np.cos(ang) * f * L0, y0 + np.sin(ang) * f * L0,
                          bang, L0 * (1 - f) * rng.uniform(0.7, 1.0), stems[0][4] * 0.7))
            for (x0, y0, th, L, w0) in stems:
                amp = rng.uniform(0.05, 0.09)
                dx, dy = side * np.cos(th), np.sin(th)
                sl = _window(a, size, x0 + dx * L / 2, y0 + dy * L / 2, L / 2 + 4 * w0 + 2 * px)
                ru, rv = u[sl] - x0, v[sl] - y0
                along = ru * dx + rv * dy
                perp = -ru * dy + rv * dx
                t = np.clip(along / L, 0.0, 1.0)
                w = w0 * np.clip(1.0 - 0.7 * t, 0.3, 1.0) + 0.4 * px
                inside = (along > 0) & (along < L)
                ramp = _smoothstep(0.0, 0.15, t)
                q = perp / w
                out[sl] += inside * amp * np.exp(-q * q) * np.sqrt(1.0 - t) * ramp
    return out


# --------------------------------------------------------------------------- lesions
def _lesion_centres(rng: np.random.Generator, a: dict, n: int, sides: list[int]):
    """Sample ``n`` lesion centres inside the given lungs, weighted to the upper zones."""
    cu = rng.uniform(-0.95, 0.95, 600)
    cv = rng.uniform(-0.85, 0.65, 600)
    weight = np.zeros_like(cu)
    side_of = np.zeros(cu.shape, dtype=int)
    for side in sides:
        inside = _lung_inside(cu, cv, a, side)
        s = _lung_height_fraction(cv, a, side)
        zone = np.where(s < 1 / 3, 1.0, np.where(s < 2 / 3, 0.3, 0.1))
        weight += inside * zone
        side_of[inside] = side
    if weight.sum() <= 0:  # cannot happen with sane anatomy; be safe
        return []
    idx = rng.choice(cu.size, size=n, replace=True, p=weight / weight.sum())
    return [(cu[i], cv[i], side_of[i]) for i in idx]


def lesion_settings(difficulty: float) -> dict:
    """Mean lesion count, size factor and contrast (attenuation) at ``difficulty``."""
    dif = float(difficulty)
    return {"count": float(np.interp(dif, [0, 1], [6.0, 1.2])),
            "size": float(np.interp(dif, [0, 1], [1.0, 0.45])),
            "contrast": float(np.interp(dif, [0, 1], [0.5, 0.12]))}


def _add_lesions(u, v, a: dict, rng: np.random.Generator, difficulty: float, lungs, px: float):
    """Return (attenuation added, lesion mask) for a TB image."""
    size_px = u.shape[0]
    ls = lesion_settings(difficulty)
    n = max(1, int(round(ls["count"] + rng.uniform(-1.0, 1.0))))
    size, amp = ls["size"], ls["contrast"]
    if rng.random() < 0.45:
        sides = [int(rng.choice([-1, 1]))]  # one lung
    else:
        sides = [-1, 1]
    centres = _lesion_centres(rng, a, n, sides)
    add = np.zeros_like(u)
    mask = np.zeros(u.shape, dtype=bool)
    for (cu, cv, _side) in centres:
        kind = rng.choice(3, p=[0.45, 0.35, 0.2])
        sz = size * rng.uniform(0.8, 1.25)
        am = amp * rng.uniform(0.8, 1.2)
        if kind == 0:  # nodule, often with satellites
            blobs = [(cu, cv, 0.055 * sz)]
            for _ in range(int(rng.integers(0, 4))):
                r = 0.055 * sz * rng.uniform(0.4, 0.7)
                ang = rng.uniform(0, 2 * np.pi)
                dist = 0.055 * sz * rng.uniform(1.6, 3.0)
                blobs.append((cu + dist * np.cos(ang), cv + dist * np.sin(ang), r))
            for (bu, bv, R) in blobs:
                R = max(R, 0.022)
                sl = _window(a, size_px, bu, bv, 3.6 * R)
                du, dv = u[sl] - bu, v[sl] - bv
                phi = np.arctan2(dv, du)
                Rphi = R * (1 + 0.15 * np.cos(2 * phi + rng.uniform(0, 6.3))
                            + 0.08 * np.cos(3 * phi + rng.uniform(0, 6.3)))
                g = np.exp(-1.2 * (du * du + dv * dv) / (Rphi * Rphi))
                add[sl] += am * g
                mask[sl] |= g > np.exp(-1.2)
        elif kind == 1:  # patchy consolidation
            ra, rb = 0.12 * sz * rng.uniform(0.8, 1.2), 0.09 * sz * rng.uniform(0.8, 1.2)
            tilt = rng.uniform(0, np.pi)
            grid = ndimage.gaussian_filter(rng.standard_normal((10, 10)), 0.8)
            grid /= grid.std() + 1e-9
            sl = _window(a, size_px, cu, cv, 2.6 * max(ra, rb))
            ct, st = np.cos(tilt), np.sin(tilt)
            lu = (ct * (u[sl] - cu) + st * (v[sl] - cv)) / ra
            lv = (-st * (u[sl] - cu) + ct * (v[sl] - cv)) / rb
            noise = ndimage.map_coordinates(grid, [(lv + 1.8) / 3.6 * 9, (lu + 1.8) / 3.6 * 9],
                                            order=1, mode="nearest")
            f = np.exp(-1.3 * (lu * lu + lv * lv)) * (1.0 + 0.45 * noise)
            add[sl] += 0.85 * am * np.clip((f - 0.15) / 0.6, 0.0, 1.0) ** 1.2
            mask[sl] |= f > 0.42
        else:  # cavity: bright wall, darker (air-filled) centre, faint halo
            R0 = max(0.075 * sz * rng.uniform(0.85, 1.2), 0.03)
            ph = rng.uniform(0, 6.3, 3)
            sl = _window(a, size_px, cu, cv, 4.5 * R0)
            du, dv = u[sl] - cu, v[sl] - cv
            phi = np.arctan2(dv, du)
            R = R0 * (1 + 0.12 * np.cos(2 * phi + ph[0]) + 0.07 * np.cos(3 * phi + ph[1]))
            r = np.sqrt(du * du + dv * dv)
            wall = 0.4 * R * (1 + 0.35 * np.cos(phi + ph[2]))
            ring = np.exp(-((r - (R - wall / 2)) / (wall / 2 + 0.3 * px)) ** 2)
            hole = _smoothstep(R - wall * 0.6, R - wall * 1.3, r)
            halo = np.exp(-(r / (1.8 * R)) ** 2)
            add[sl] += am * (0.9 * ring + 0.45 * halo - 0.4 * hole)
            mask[sl] |= r < R
    lung = lungs[-1] | lungs[1]
    mask &= lung
    if not mask.any() and centres:  # a lesion smaller than a pixel: mark its pixel
        row, col = _to_pixel(centres[0][0], centres[0][1], a, size_px)
        rr, cc = np.nonzero(lung)
        i = np.argmin((rr - row) ** 2 + (cc - col) ** 2)
        mask[rr[i], cc[i]] = True
        add[rr[i], cc[i]] += amp
    return add * lung, mask


# --------------------------------------------------------------------------- phantom
def make_phantom(rng: np.random.Generator, size: int = 128, label: int = 0,
                 difficulty: float = 0.5) -> Phantom:
    """Draw one synthetic chest X-ray; ``label`` 1 adds TB lesions.

    ``difficulty`` in [0, 1]: 0 gives many large high-contrast lesions, 1 few small
    faint ones. Everything random comes from ``rng``.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    size = int(size)
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    a = _draw_anatomy(rng)
    u, v = _canonical_grid(size, a)
    px = 2.0 / size / a["scale"]  # one pixel in canonical units

    wb = _body_halfwidth(v, a)
    body = _smoothstep(0.0, 3 * px + 0.015, wb - np.abs(u)) * _smoothstep(-1.25, -1.15, v)
    thick = np.sqrt(np.clip(1.0 - (u / np.maximum(wb, 1e-3)) ** 2, 0.0, 1.0))
    A = body * (0.3 + 0.65 * thick)

    heart_q = _heart_q(u, v, a)
    lungs = {s: _lung_inside(u, v, a, s, heart_q) for s in (-1, 1)}
    sigma = max(0.8, 0.007 * size)
    # fine lung texture (interstitium, small vessels) on a fixed canonical grid
    tex = ndimage.gaussian_filter(rng.standard_normal((56, 56)), 0.9)
    tex /= tex.std() + 1e-9
    tex = ndimage.map_coordinates(tex, [(v + 1.3) / 2.6 * 55, (u + 1.3) / 2.6 * 55],
                                  order=1, mode="nearest")
    darkness = np.zeros_like(u)
    lung_soft = np.zeros_like(u)
    for s in (-1, 1):
        soft = ndimage.gaussian_filter(lungs[s].astype(np.float64), sigma)
        frac = np.clip(_lung_height_fraction(v, a, s), 0.0, 1.0)
        prof = 1.0 - 0.35 * frac * frac - 0.15 * _smoothstep(0.35, 0.1, s * u)
        darkness += soft * prof
        lung_soft += soft
    A -= 0.57 * darkness * (1 + 0.07 * tex) * body

    # mediastinum and abdomen: body without lung; add denser organs
    A += 0.1 * _smoothstep(1.15, 0.85, heart_q)
    _add_ellipse(A, u, v, a, a["aorta_c"], a["aorta_r"], 0.04, (1.2, 0.8))
    A += body * 0.08 * _smoothstep(0.3, 0.6, v)  # liver/abdominal soft tissue
    A -= 0.25 * np.exp(-(u / 0.035) ** 4) * _smoothstep(-0.2, -0.5, v) * _smoothstep(-1.1, -0.9, v)
    if a["bubble"]:
        L = a["lungs"][1]
        c = (a["bubble_c"][0], L["dome_v"] + 0.12 + a["bubble_c"][1])
        _add_ellipse(A, u, v, a, c, a["bubble_r"], -0.18, (1.2, 0.7))
    A += _spine(u, v, a)
    A += body * _ribs(u, v, a, wb, px)
    A += _clavicles(u, v, a, px)
    for side in (-1, 1):  # humeral heads and glenoids at the shoulders
        _add_ellipse(A, u, v, a, (side * 1.02, a["shoulder_v"] + 0.12), (0.16, 0.18), 0.2, (1.1, 0.8))
    A += _vessels(u, v, a, rng, px) * lung_soft

    if label == 1:
        add, lesions = _add_lesions(u, v, a, rng, difficulty, lungs, px)
        A += add
    else:
        lesions = np.zeros((size, size), dtype=bool)

    # exposure: smooth gradient, film response, window, gamma, blur, noise
    g = a["grad"]
    A *= 1.0 + g[0] * u + g[1] * v + g[2] * (u * u + v * v - 0.6)
    img = 1.0 - np.exp(-a["k"] * np.clip(A, 0.0, None))
    img = (img - a["window_lo"]) / (a["window_hi"] - a["window_lo"])
    img = np.clip(img, 0.0, 1.0) ** a["gamma"]
    img = ndimage.gaussian_filter(img, max(0.5, 0.004 * size))
    noise = rng.standard_normal((size, size))
    img = img + a["noise"] * (0.6 * noise + 0.8 * ndimage.gaussian_filter(noise, 1.0))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return Phantom(image=img, left_lung=lungs[1], right_lung=lungs[-1], lesions=lesions,
                   label=int(label))


# --------------------------------------------------------------------------- writing
def phantom_rng(seed: int, set_name: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``set_name``: independent of the counts."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(set_name.encode()), int(index)])
    return np.random.default_rng(ss)


def phantom_label(index: int) -> int:
    """Labels alternate, starting with a normal image at index 1 (n // 2 TB images in n)."""
    return 0 if index % 2 == 1 else 1


def _settings(counts: dict, size: int, seed: int, difficulty: float) -> dict:
    return {"generator_version": GENERATOR_VERSION, "counts": dict(sorted(counts.items())),
            "size": int(size), "seed": int(seed), "difficulty": float(difficulty)}


def _read_settings(root: Path) -> dict | None:
    try:
        man = json.loads((root / MANIFEST).read_text())
        return {k: man[k] for k in ("generator_version", "counts", "size", "seed", "difficulty")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def _mask_png(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale(root: Path) -> None:
    """Remove temporary siblings left by stopped runs (their process is gone)."""
    for prefix in (".tmp-", ".old-"):
        for p in root.parent.glob(f"{prefix}{root.name}-*"):
            pid = p.name[len(prefix) + len(root.name) + 1:]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                shutil.rmtree(p, ignore_errors=True)


def write_phantom_sets(root, counts: dict[str, int] | None = None, size: int = 128, seed: int = 0,
                       difficulty: float = 0.5, progress: bool = True) -> Path:
    """Write phantom data sets under ``root`` in the official NLM layouts; return ``root``.

    Layout (numbering from 1, labels alternating 0, 1, 0, ...)::

        ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png        8-bit gray
        ChinaSet_AllFiles/mask/CHNCXR_0001_0_mask.png      both lungs, 0/255
        ChinaSet_AllFiles/LesionMask/CHNCXR_0001_0.png     0/255 (all 0 when normal)
        MontgomerySet/CXR_png/MCUCXR_0001_0.png            16-bit gray, 12-bit values
        MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png   patient's left lung
        MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png  patient's right lung
        MontgomerySet/LesionMask/MCUCXR_0001_0.png
        PHANTOM.json                                       settings, written last

    The tree is built in a temporary sibling folder and moved onto ``root`` at the end.
    When ``root/PHANTOM.json`` already records the same settings nothing is done; other
    settings regenerate the whole tree. Image ``i`` of a set depends only on
    ``(seed, set, i, size, difficulty)``, so changing the counts keeps earlier images.
    """
    root = Path(root)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    for name, n in counts.items():
        if name not in _SETS:
            raise ValueError(f"unknown phantom set {name!r}; expected one of {sorted(_SETS)}")
        if int(n) != n or n < 0:
            raise ValueError(f"count of {name!r} must be a non-negative integer, got {n!r}")
    counts = {k: int(n) for k, n in counts.items()}
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    if int(size) != size or size < 32:
        raise ValueError(f"size must be an integer of at least 32 px, got {size!r}")
    settings = _settings(counts, size, seed, difficulty)
    if _read_settings(root) == settings:
        return root
    if root.exists() and not (root / MANIFEST).exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not a phantom data set (no {MANIFEST}); "
                              "refusing to overwrite it")

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = root.parent / f".tmp-{root.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        per_class = {}
        with tqdm(total=sum(counts.values()), desc="phantoms", unit="img", disable=not progress) as bar:
            _write_sets(tmp, counts, size, seed, difficulty, per_class, bar)
        (tmp / MANIFEST).write_text(json.dumps({**settings, "per_class": per_class},
                                               indent=2, sort_keys=True) + "\n")
        old = None
        if root.exists():
            old = root.parent / f".old-{root.name}-{os.getpid()}"
            os.replace(root, old)
        try:
            os.replace(tmp, root)
        except OSError:
            if old is not None and not root.exists():
                os.replace(old, root)  # put the previous tree back
                old = None
            if _read_settings(root) != settings:  # not a race won by an identical run
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_sets(tmp: Path, counts: dict, size: int, seed: int, difficulty: float,
                per_class: dict, bar) -> None:
    """Write every image and mask of ``counts`` under ``tmp``; count labels in ``per_class``."""
    for name, n in counts.items():
        top, prefix = _SETS[name]
        base = tmp / top
        dirs = {"img": base / "CXR_png", "lesion": base / "LesionMask"}
        if name == "shenzhen":
            dirs["mask"] = base / "mask"
        else:
            dirs["left"] = base / "ManualMask" / "leftMask"
            dirs["right"] = base / "ManualMask" / "rightMask"
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        per_class[name] = {"0": 0, "1": 0}
        for i in range(1, n + 1):
            label = phantom_label(i)
            ph = make_phantom(phantom_rng(seed, name, i), size=size, label=label,
                              difficulty=difficulty)
            stem = f"{prefix}_{i:04d}_{label}"
            if name == "shenzhen":
                _save_png(np.round(ph.image * 255.0).astype(np.uint8), dirs["img"] / f"{stem}.png")
                _save_png(_mask_png(ph.left_lung | ph.right_lung), dirs["mask"] / f"{stem}_mask.png")
            else:
                _save_png(np.round(ph.image * 4095.0).astype(np.uint16), dirs["img"] / f"{stem}.png")
                _save_png(_mask_png(ph.left_lung), dirs["left"] / f"{stem}.png")
                _save_png(_mask_png(ph.right_lung), dirs["right"] / f"{stem}.png")
            _save_png(_mask_png(ph.lesions), dirs["lesion"] / f"{stem}.png")
            per_class[name][str(label)] += 1
            bar.update(1)
