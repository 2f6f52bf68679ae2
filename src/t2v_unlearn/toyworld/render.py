"""Deterministic renderer of toy-world scenes: still images and short clips.

Everything is drawn with PIL on a canvas twice the output size and box-downsampled, so edges are
smooth at 32 px. All randomness (positions, sizes, stars, billboards, style swirls) comes from the
seed, so `render_clip(scene, seed)` returns the same pixels on every machine.
Coordinates below are in canvas pixels: x to the right, y down, `ground` is where feet touch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from t2v_unlearn.toyworld.grammar import SceneDescription, load_world

SUPERSAMPLING = 2
OUTLINE = (25, 25, 25)
SKIN = (236, 192, 152)


@dataclass
class Pose:
    """Position, size and motion phase of one sprite in one frame."""

    x: float  # horizontal centre
    ground: float  # bottom of the sprite
    height: float
    phase: float  # motion cycle position in [0, 1)
    motion: str | None
    facing: int = 1  # 1: right, -1: left


# ---------------------------------------------------------------------------------------------
# Backgrounds: RGB images of the canvas size.


def _vertical_gradient(size: int, top, bottom, start: float = 0.0, end: float = 1.0) -> np.ndarray:
    t = np.clip((np.linspace(0, 1, size) - start) / max(end - start, 1e-6), 0, 1)[:, None, None]
    row = np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t
    return np.broadcast_to(row, (size, size, 3)).copy()


def _draw_background(scene: str | None, size: int, rng: np.random.Generator) -> Image.Image:
    if scene is None:
        array = _vertical_gradient(size, (218, 222, 230), (192, 197, 207))
        return Image.fromarray(array.astype(np.uint8))
    if scene == "park":
        horizon = size * rng.uniform(0.58, 0.66)
        array = _vertical_gradient(size, (250, 150, 120), (255, 224, 150), 0, horizon / size)
        image = Image.fromarray(array.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        sun_x = size * rng.choice([0.18, 0.82]) + rng.uniform(-3, 3)
        radius = size * 0.13
        draw.ellipse([sun_x - radius, horizon - radius, sun_x + radius, horizon + radius], fill=(255, 236, 90))
        draw.rectangle([0, horizon, size, size], fill=(78, 168, 66))
        for stripe in range(3):
            y = horizon + (stripe + 1) * (size - horizon) / 4
            draw.line([0, y, size, y], fill=(98, 186, 80), width=2)
        for tree_x in (size * rng.uniform(0.02, 0.1), size * rng.uniform(0.9, 0.98)):
            draw.rectangle([tree_x - 2, horizon - size * 0.1, tree_x + 2, horizon + 2], fill=(100, 64, 30))
            draw.ellipse([tree_x - size * 0.09, horizon - size * 0.26, tree_x + size * 0.09, horizon - size * 0.08],
                         fill=(34, 110, 44))
        return image
    if scene == "times_square":
        image = Image.fromarray(_vertical_gradient(size, (14, 14, 40), (34, 30, 70)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        colours = [(240, 40, 160), (40, 220, 240), (250, 220, 40), (240, 60, 40), (120, 240, 60)]
        x = -rng.uniform(0, size * 0.1)
        while x < size:
            width = size * rng.uniform(0.18, 0.3)
            top = size * rng.uniform(0.05, 0.3)
            draw.rectangle([x, top, x + width - 2, size], fill=(62, 62, 80))
            for _ in range(2):
                bx = x + rng.uniform(1, width * 0.4)
                by = top + rng.uniform(2, size * 0.45)
                colour = colours[int(rng.integers(len(colours)))]
                draw.rectangle([bx, by, bx + width * 0.5, by + size * 0.1], fill=colour)
            x += width
        ground = size * 0.82
        draw.rectangle([0, ground, size, size], fill=(48, 48, 54))
        draw.line([0, ground + 5, size, ground + 5], fill=(240, 210, 40), width=2)
        return image
    if scene == "jungle_river":
        horizon = size * 0.42
        array = _vertical_gradient(size, (110, 50, 140), (252, 132, 60), 0, horizon / size)
        image = Image.fromarray(array.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        sun_x = size * rng.uniform(0.35, 0.65)
        draw.ellipse([sun_x - 6, horizon - 9, sun_x + 6, horizon + 3], fill=(240, 60, 40))
        draw.rectangle([0, horizon, size, size], fill=(24, 92, 42))
        center = size * 0.5 + rng.uniform(-4, 4)
        draw.polygon([(center - 3, horizon), (center + 3, horizon), (size * 0.85, size), (size * 0.15, size)],
                     fill=(56, 104, 176))
        for _ in range(5):
            y = rng.uniform(horizon + 4, size)
            half = (y - horizon) / (size - horizon) * size * 0.3
            draw.line([center - half * 0.5, y, center + half * 0.5, y], fill=(240, 150, 80), width=1)
        for side in (0.0, 1.0):
            for _ in range(3):
                cx = size * side + rng.uniform(-6, 6)
                cy = rng.uniform(horizon - 10, horizon + 14)
                r = size * rng.uniform(0.1, 0.16)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(16, 74, 30))
        return image
    if scene == "space":
        # Deep blue rather than black, so that black features (Snoopy's ear, a panda's limbs) keep an
        # edge against the sky.
        image = Image.new("RGB", (size, size), (24, 30, 78))
        draw = ImageDraw.Draw(image)
        for _ in range(45):
            x, y = rng.uniform(0, size, 2)
            draw.point((x, y), fill=(255, 255, 255))
            if rng.random() < 0.3:
                draw.rectangle([x, y, x + 1, y + 1], fill=(230, 230, 255))
        px = size * rng.choice([0.15, 0.85])
        py = size * rng.uniform(0.12, 0.25)
        r = size * 0.09
        draw.ellipse([px - r, py - r, px + r, py + r], fill=(200, 120, 220))
        draw.line([px - 2 * r, py + r * 0.3, px + 2 * r, py - r * 0.3], fill=(240, 200, 120), width=2)
        return image
    raise ValueError(f"unknown scene {scene!r}; expected one of park, times_square, jungle_river, space")


# ---------------------------------------------------------------------------------------------
# Sprites. Each function draws one subject at a pose.


def _swing(pose: Pose, cycles: float = 2.0) -> float:
    """Return a value in [-1, 1] that alternates `cycles` times per clip."""
    return math.sin(2 * math.pi * cycles * pose.phase)


def _draw_person(draw, pose: Pose, *, head_scale, skin, hair, shirt, trousers, logo=None, hat=None,
                 dress=False, suit=False, empty_suit=False):
    h = pose.height
    x = pose.x
    top = pose.ground - h
    head_r = h * head_scale
    head_y = top + head_r
    shoulder_y = top + 2 * head_r + h * 0.02
    hip_y = pose.ground - h * 0.36
    body_w = h * (0.34 if suit else 0.24)
    leg = _swing(pose) if pose.motion in ("walking", "dancing", "climbing") else 0.0

    # Legs, then body, arms and head, so the head sits on top.
    leg_colour = (228, 228, 236) if suit else trousers
    for side in (-1, 1):
        foot_x = x + side * body_w * 0.35 + side * leg * h * 0.1
        draw.line([x + side * body_w * 0.25, hip_y, foot_x, pose.ground], fill=leg_colour, width=max(2, int(h * 0.1)))
    if dress:
        draw.polygon([(x, shoulder_y), (x - body_w * 0.95, hip_y + h * 0.08), (x + body_w * 0.95, hip_y + h * 0.08)],
                     fill=shirt, outline=OUTLINE)
    else:
        body_colour = (232, 232, 240) if suit else shirt
        draw.rectangle([x - body_w / 2, shoulder_y, x + body_w / 2, hip_y], fill=body_colour, outline=OUTLINE)
        if suit:
            draw.rectangle([x - body_w * 0.25, shoulder_y + 3, x + body_w * 0.25, shoulder_y + 7], fill=(200, 40, 40))
    if logo == "x" and not suit:
        cx, cy, r = x, (shoulder_y + hip_y) / 2, body_w * 0.3
        draw.line([cx - r, cy - r, cx + r, cy + r], fill=(250, 250, 250), width=2)
        draw.line([cx - r, cy + r, cx + r, cy - r], fill=(250, 250, 250), width=2)

    arm_colour = shirt
    if dress:
        arm_colour = skin
    if suit:
        arm_colour = (228, 228, 236)
    arm_len = h * 0.3
    for side in (-1, 1):
        angle = 0.35  # radians from straight down
        if pose.motion == "dancing":
            angle = 2.4 + 0.5 * _swing(pose) * side
        elif pose.motion == "greeting" and side == pose.facing:
            angle = 2.5 + 0.5 * _swing(pose, 3)
        elif pose.motion == "selfie" and side == pose.facing:
            angle = 2.0
        elif pose.motion == "flying":
            angle = 1.6
        elif pose.motion == "climbing":
            angle = 2.6 + 0.4 * _swing(pose) * side
        elif pose.motion == "playing":
            angle = 1.2 + 0.4 * _swing(pose, 3) * side
        hand_x = x + side * (body_w / 2 + math.sin(angle) * arm_len)
        hand_y = shoulder_y + 2 - math.cos(angle) * arm_len
        draw.line([x + side * body_w / 2, shoulder_y + 2, hand_x, hand_y], fill=arm_colour, width=max(2, int(h * 0.08)))
        if pose.motion == "selfie" and side == pose.facing:
            draw.rectangle([hand_x - 2, hand_y - 4, hand_x + 2, hand_y + 1], fill=(20, 20, 20))
            if _swing(pose, 2) > 0:
                draw.ellipse([hand_x - 3, hand_y - 7, hand_x + 3, hand_y - 1], fill=(255, 255, 220))

    if suit:
        helmet_r = head_r * 1.45
        draw.ellipse([x - helmet_r, head_y - helmet_r, x + helmet_r, head_y + helmet_r], fill=(205, 210, 220),
                     outline=OUTLINE)
        if empty_suit:
            visor = helmet_r * 0.72
            draw.ellipse([x - visor, head_y - visor, x + visor, head_y + visor], fill=(30, 44, 96))
            draw.ellipse([x - visor * 0.5, head_y - visor * 0.6, x - visor * 0.1, head_y - visor * 0.2],
                         fill=(200, 220, 255))
            return
    draw.ellipse([x - head_r, head_y - head_r, x + head_r, head_y + head_r], fill=skin, outline=OUTLINE)
    if hair is not None:
        if logo == "x":
            # Elon Musk: a flat-topped block of black hair over a square-ish large head.
            draw.rectangle([x - head_r, head_y - head_r, x + head_r, head_y - head_r * 0.35], fill=hair)
        else:
            draw.chord([x - head_r, head_y - head_r, x + head_r, head_y + head_r], 180, 360, fill=hair)
    eye_y = head_y + head_r * 0.05
    for side in (-1, 1):
        draw.point((x + side * head_r * 0.4, eye_y), fill=OUTLINE)
    if hat is not None:
        draw.rectangle([x - head_r * 1.3, head_y - head_r * 0.9, x + head_r * 1.3, head_y - head_r * 0.6], fill=hat)
        draw.rectangle([x - head_r * 0.8, head_y - head_r * 1.9, x + head_r * 0.8, head_y - head_r * 0.7], fill=hat)


def _draw_man(draw, pose, suit=False):
    _draw_person(draw, pose, head_scale=0.12, skin=SKIN, hair=(112, 70, 30), shirt=(40, 90, 205),
                 trousers=(105, 72, 40), suit=suit)


def _draw_elon(draw, pose, suit=False):
    _draw_person(draw, pose, head_scale=0.17, skin=(242, 204, 176), hair=(12, 12, 12), shirt=(18, 18, 18),
                 trousers=(62, 62, 72), logo="x", suit=suit)


def _draw_dancer(draw, pose):
    _draw_person(draw, pose, head_scale=0.11, skin=(176, 116, 78), hair=None, shirt=(222, 36, 160),
                 trousers=(176, 116, 78), hat=(20, 20, 20), dress=True)


def _draw_empty_suit(draw, pose):
    _draw_person(draw, pose, head_scale=0.13, skin=SKIN, hair=None, shirt=None, trousers=None, suit=True,
                 empty_suit=True)


def _draw_children(draw, pose):
    for offset, shirt, hair in ((-0.22, (60, 180, 60), (230, 120, 30)), (0.22, (245, 212, 40), (90, 50, 20))):
        child = Pose(pose.x + offset * pose.height, pose.ground, pose.height * 0.62, pose.phase,
                     "greeting" if pose.motion == "greeting" else None, -1)
        _draw_person(draw, child, head_scale=0.17, skin=SKIN, hair=hair, shirt=shirt, trousers=(50, 60, 140))


def _draw_snoopy(draw, pose):
    h, x, g = pose.height, pose.x, pose.ground
    f = pose.facing
    white = (250, 250, 250)
    step = _swing(pose) if pose.motion in ("walking", "dancing", "climbing") else 0.0
    for side in (-1, 1):
        fx = x + side * h * 0.12 + side * step * h * 0.06
        draw.ellipse([fx - h * 0.1, g - h * 0.1, fx + h * 0.1, g], fill=white, outline=OUTLINE)
    draw.ellipse([x - h * 0.2, g - h * 0.62, x + h * 0.2, g - h * 0.06], fill=white, outline=OUTLINE)
    draw.line([x - h * 0.16, g - h * 0.58, x + h * 0.16, g - h * 0.58], fill=(220, 30, 30), width=2)
    # Head: a round skull with a long snout to the facing side, a black nose and a black ear.
    hx, hy = x + f * h * 0.05, g - h * 0.78
    draw.ellipse([hx - h * 0.2, hy - h * 0.2, hx + h * 0.2, hy + h * 0.18], fill=white, outline=OUTLINE)
    draw.ellipse([hx + f * h * 0.05 - h * 0.18, hy - h * 0.04, hx + f * h * 0.05 + h * 0.18, hy + h * 0.14],
                 fill=white)
    nose_x = hx + f * h * 0.22
    draw.ellipse([nose_x - h * 0.06, hy - h * 0.03, nose_x + h * 0.06, hy + h * 0.07], fill=(10, 10, 10))
    ear_x = hx - f * h * 0.12
    lift = 0.1 * _swing(pose, 3) if pose.motion in ("flying", "dancing") else 0.0
    draw.ellipse([ear_x - h * 0.08, hy - h * (0.12 + lift), ear_x + h * 0.08, hy + h * (0.2 - lift)], fill=(10, 10, 10))
    if pose.motion in ("greeting", "selfie", "playing"):
        arm_y = g - h * (0.5 + 0.08 * _swing(pose, 3))
        draw.line([x + f * h * 0.18, g - h * 0.42, x + f * h * 0.34, arm_y - h * 0.1], fill=OUTLINE, width=2)


def _draw_quadruped(draw, pose, body, ears, *, snout=0.18, tail=None, nose=(10, 10, 10), patches=None, scale=1.0):
    h, x, g = pose.height * scale, pose.x, pose.ground
    f = pose.facing
    step = _swing(pose) if pose.motion in ("walking", "climbing", "dancing") else 0.0
    body_top, body_bottom = g - h * 0.62, g - h * 0.22
    for index, lx in enumerate((-0.36, -0.2, 0.2, 0.36)):
        shift = step * h * 0.06 * (1 if index % 2 else -1)
        leg_x = x + lx * h + shift
        colour = patches if patches is not None else body
        draw.rectangle([leg_x - h * 0.05, g - h * 0.3, leg_x + h * 0.05, g], fill=colour)
    draw.ellipse([x - h * 0.46, body_top, x + h * 0.46, body_bottom], fill=body, outline=OUTLINE)
    if tail is not None:
        tx = x - f * h * 0.44
        draw.line([tx, body_top + h * 0.08, tx - f * h * 0.2, body_top - h * 0.12], fill=tail, width=max(2, int(h * 0.09)))
    hx, hy = x + f * h * 0.42, g - h * 0.72
    r = h * 0.18
    for side in (-1, 1):
        ex = hx + side * r * 0.6
        if ears == "pointed":
            draw.polygon([(ex - r * 0.35, hy - r * 0.5), (ex + r * 0.35, hy - r * 0.5), (ex, hy - r * 1.45)],
                         fill=body, outline=OUTLINE)
        else:
            colour = patches if patches is not None else body
            draw.ellipse([ex - r * 0.4, hy - r * 1.2, ex + r * 0.4, hy - r * 0.4], fill=colour, outline=OUTLINE)
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=body, outline=OUTLINE)
    if snout:
        sx = hx + f * r * 0.9
        draw.polygon([(hx + f * r * 0.3, hy - r * 0.3), (sx + f * h * snout * 0.5, hy + r * 0.2),
                      (hx + f * r * 0.3, hy + r * 0.6)], fill=body, outline=OUTLINE)
        draw.ellipse([sx + f * h * snout * 0.5 - 2, hy, sx + f * h * snout * 0.5 + 2, hy + 3], fill=nose)
    draw.point((hx + f * r * 0.3, hy - r * 0.2), fill=OUTLINE)


def _draw_wolf(draw, pose):
    _draw_quadruped(draw, pose, (128, 128, 140), "pointed", tail=(100, 100, 112), snout=0.22)


def _draw_polar_bear(draw, pose):
    _draw_quadruped(draw, pose, (246, 244, 232), "round", snout=0.1, scale=1.1)


def _draw_cat(draw, pose):
    _draw_quadruped(draw, pose, (240, 138, 40), "pointed", tail=(200, 100, 20), snout=0.0, scale=0.85)


def _draw_panda(draw, pose):
    h, x, g = pose.height, pose.x, pose.ground
    white, black = (250, 250, 250), (16, 16, 16)
    swing = _swing(pose, 3) if pose.motion is not None else 0.0
    for side in (-1, 1):
        draw.ellipse([x + side * h * 0.16 - h * 0.1, g - h * 0.2, x + side * h * 0.16 + h * 0.1, g], fill=black)
        arm_y = g - h * (0.5 + (0.12 * swing * side if pose.motion else 0))
        draw.ellipse([x + side * h * 0.28 - h * 0.08, arm_y - h * 0.1, x + side * h * 0.28 + h * 0.08, arm_y + h * 0.1],
                     fill=black)
    draw.ellipse([x - h * 0.26, g - h * 0.62, x + h * 0.26, g - h * 0.08], fill=white, outline=OUTLINE)
    hy, r = g - h * 0.76, h * 0.2
    for side in (-1, 1):
        draw.ellipse([x + side * r * 0.85 - r * 0.35, hy - r * 1.2, x + side * r * 0.85 + r * 0.35, hy - r * 0.5],
                     fill=black)
    draw.ellipse([x - r, hy - r, x + r, hy + r], fill=white, outline=OUTLINE)
    for side in (-1, 1):
        draw.ellipse([x + side * r * 0.42 - r * 0.25, hy - r * 0.3, x + side * r * 0.42 + r * 0.25, hy + r * 0.2],
                     fill=black)
    draw.point((x, hy + r * 0.45), fill=black)


def _draw_mickey(draw, pose):
    h, x, g = pose.height, pose.x, pose.ground
    black = (14, 14, 14)
    step = _swing(pose) if pose.motion in ("walking", "dancing", "climbing") else 0.0
    for side in (-1, 1):
        fx = x + side * h * 0.12 + side * step * h * 0.07
        draw.line([x + side * h * 0.07, g - h * 0.3, fx, g - h * 0.06], fill=black, width=2)
        draw.ellipse([fx - h * 0.11, g - h * 0.1, fx + h * 0.11, g], fill=(250, 210, 30), outline=OUTLINE)
    draw.ellipse([x - h * 0.15, g - h * 0.6, x + h * 0.15, g - h * 0.3], fill=black)
    draw.rectangle([x - h * 0.17, g - h * 0.42, x + h * 0.17, g - h * 0.27], fill=(220, 24, 30))
    for side in (-1, 1):
        draw.point((x + side * h * 0.07, g - h * 0.36), fill=(255, 255, 255))
    arm_up = pose.motion in ("greeting", "dancing", "flying", "selfie", "playing", "climbing")
    for side in (-1, 1):
        lift = (0.25 + 0.1 * _swing(pose, 3) * side) if arm_up else -0.05
        hand = (x + side * h * 0.33, g - h * (0.5 + lift))
        draw.line([x + side * h * 0.12, g - h * 0.52, *hand], fill=black, width=2)
        draw.ellipse([hand[0] - 2.5, hand[1] - 2.5, hand[0] + 2.5, hand[1] + 2.5], fill=(250, 250, 250))
    hy, r = g - h * 0.74, h * 0.16
    for side in (-1, 1):
        ex, ey, er = x + side * r * 1.15, hy - r * 1.05, r * 0.72
        draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=black)
    draw.ellipse([x - r, hy - r, x + r, hy + r], fill=black)
    draw.ellipse([x - r * 0.7, hy - r * 0.25, x + r * 0.7, hy + r * 0.95], fill=(248, 206, 170))
    draw.ellipse([x - 1.5, hy + r * 0.15, x + 1.5, hy + r * 0.45], fill=black)


def _draw_butterfly(draw, pose):
    h, x, g = pose.height, pose.x, pose.ground
    cy = g - h * 0.5
    flap = 0.55 + 0.45 * abs(_swing(pose, 3)) if pose.motion == "flying" else 1.0
    for side in (-1, 1):
        wx = x + side * h * 0.28 * flap
        draw.ellipse([wx - h * 0.24 * flap, cy - h * 0.42, wx + h * 0.24 * flap, cy + h * 0.02], fill=(156, 60, 206),
                     outline=OUTLINE)
        draw.ellipse([wx - h * 0.16 * flap, cy - h * 0.02, wx + h * 0.16 * flap, cy + h * 0.32], fill=(252, 150, 30),
                     outline=OUTLINE)
    draw.line([x, cy - h * 0.36, x, cy + h * 0.3], fill=OUTLINE, width=2)


def _draw_rocket(draw, pose):
    h, x, g = pose.height, pose.x, pose.ground
    w = h * 0.3
    body_top, body_bottom = g - h * 0.75, g - h * 0.16
    if pose.motion == "flying":
        length = h * (0.16 + 0.06 * abs(_swing(pose, 4)))
        draw.polygon([(x - w * 0.35, body_bottom), (x + w * 0.35, body_bottom), (x, body_bottom + length)],
                     fill=(255, 160, 20))
    for side in (-1, 1):
        draw.polygon([(x + side * w / 2, body_bottom - h * 0.16), (x + side * w * 1.05, body_bottom + 2),
                      (x + side * w / 2, body_bottom)], fill=(214, 30, 40))
    draw.rectangle([x - w / 2, body_top, x + w / 2, body_bottom], fill=(240, 240, 244), outline=OUTLINE)
    draw.polygon([(x - w / 2, body_top), (x + w / 2, body_top), (x, g - h)], fill=(214, 30, 40), outline=OUTLINE)
    wy = body_top + h * 0.15
    draw.ellipse([x - w * 0.28, wy - w * 0.28, x + w * 0.28, wy + w * 0.28], fill=(50, 120, 220), outline=OUTLINE)


def _draw_drum_kit(draw, pose):
    h, x, g = pose.height, pose.x, pose.ground
    r = h * 0.3
    cy = g - r
    shake = 0.1 * _swing(pose, 4) if pose.motion == "playing" else 0.0
    for side in (-1, 1):
        sx = x + side * h * 0.42
        draw.line([sx, g, sx, g - h * 0.85], fill=(150, 150, 160), width=1)
        tilt = h * (0.06 + shake * side)
        draw.line([sx - h * 0.2, g - h * 0.85 - tilt, sx + h * 0.2, g - h * 0.85 + tilt], fill=(240, 200, 30),
                  width=3)
        tx, ty, tr = x + side * h * 0.28, g - h * 0.62, h * 0.14
        draw.ellipse([tx - tr, ty - tr * 0.7, tx + tr, ty + tr * 0.7], fill=(60, 90, 170), outline=OUTLINE)
    draw.ellipse([x - r, cy - r, x + r, cy + r], fill=(204, 28, 40), outline=OUTLINE)
    draw.ellipse([x - r * 0.65, cy - r * 0.65, x + r * 0.65, cy + r * 0.65], fill=(245, 240, 230))


def _draw_saxophone(draw, pose):
    h, x, g = pose.height, pose.x, pose.ground
    gold = (232, 182, 38)
    bob = h * 0.05 * _swing(pose, 2) if pose.motion == "playing" else 0.0
    top = g - h * 0.9 + bob
    width = max(3, int(h * 0.13))
    draw.line([x - h * 0.12, top, x, top + h * 0.12], fill=(30, 30, 30), width=2)
    draw.line([x, top + h * 0.12, x, g - h * 0.2 + bob], fill=gold, width=width)
    draw.arc([x - 1, g - h * 0.38 + bob, x + h * 0.3, g - h * 0.02 + bob], 0, 180, fill=gold, width=width)
    bx, by = x + h * 0.28, g - h * 0.3 + bob
    draw.polygon([(bx - h * 0.06, by), (bx + h * 0.1, by - h * 0.18), (bx + h * 0.16, by - h * 0.08)], fill=gold,
                 outline=OUTLINE)
    for index in range(3):
        draw.point((x - 1, top + h * (0.3 + 0.12 * index)), fill=(120, 80, 10))
    # Music notes drift up while playing.
    rise = h * 0.2 * pose.phase if pose.motion == "playing" else 0.0
    for nx, ny in ((x + h * 0.32, g - h * 0.8), (x + h * 0.5, g - h * 0.62)):
        ny -= rise
        draw.ellipse([nx - 2.5, ny - 2, nx + 2.5, ny + 2], fill=(10, 10, 10))
        draw.line([nx + 2, ny, nx + 2, ny - h * 0.16], fill=(10, 10, 10), width=1)


def _draw_tower(draw, pose, lattice_colours):
    """Draw a lattice tower: two curved legs with an arch, two platforms and a spire."""
    h, x, g = pose.height, pose.x, pose.ground
    half_base = h * 0.24
    top_y = g - h * 0.84
    bands = len(lattice_colours)

    def half_width(y):
        t = min(1.0, max(0.0, (g - y) / (g - top_y)))
        return half_base * (1 - t) ** 1.8 + h * 0.018

    rows = 28
    for index in range(rows):
        y0 = g - (g - top_y) * index / rows
        y1 = g - (g - top_y) * (index + 1) / rows
        colour = lattice_colours[min(bands - 1, index * bands // rows)]
        polygon = [(x - half_width(y0), y0), (x + half_width(y0), y0), (x + half_width(y1), y1), (x - half_width(y1), y1)]
        draw.polygon(polygon, fill=colour)
    # Open arch between the legs and a lattice of diagonals.
    arch_h = h * 0.17
    background_hole = [x - half_base * 0.55, g - arch_h, x + half_base * 0.55, g + arch_h]
    draw.chord(background_hole, 180, 360, fill=(40, 32, 28))
    for index in range(6):
        y0 = g - (g - top_y) * index / 6
        y1 = g - (g - top_y) * (index + 1) / 6
        draw.line([x - half_width(y0), y0, x + half_width(y1), y1], fill=OUTLINE, width=1)
        draw.line([x + half_width(y0), y0, x - half_width(y1), y1], fill=OUTLINE, width=1)
    for level in (0.3, 0.58):
        y = g - h * level
        w = half_width(y) + h * 0.04
        draw.rectangle([x - w, y - 1.5, x + w, y + 1.5], fill=lattice_colours[0], outline=OUTLINE)
    draw.line([x, top_y, x, g - h], fill=lattice_colours[-1], width=2)


def _draw_eiffel(draw, pose):
    _draw_tower(draw, pose, [(132, 92, 52)])


def _draw_tokyo(draw, pose):
    _draw_tower(draw, pose, [(234, 58, 30), (248, 248, 248)] * 3)


SPRITES = {
    "snoopy": _draw_snoopy,
    "mickey": _draw_mickey,
    "elon_musk": _draw_elon,
    "jazz_dance": _draw_dancer,
    "man": _draw_man,
    "wolf": _draw_wolf,
    "panda": _draw_panda,
    "polar_bear": _draw_polar_bear,
    "cat": _draw_cat,
    "butterfly": _draw_butterfly,
    "rocket": _draw_rocket,
    "children": _draw_children,
    "jazz_music": _draw_saxophone,
    "drum_kit": _draw_drum_kit,
    "eiffel": _draw_eiffel,
    "tokyo_tower": _draw_tokyo,
    "space_suit": _draw_empty_suit,
}


# ---------------------------------------------------------------------------------------------
# Styles: functions of a float array (S, S, 3) in [0, 255].


def _apply_style(array: np.ndarray, style: str | None, rng: np.random.Generator) -> np.ndarray:
    if style is None:
        return array
    size = array.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    if style == "van_gogh":
        # Swirling strokes in Van Gogh's blue and yellow over the whole frame.
        field = np.zeros((size, size))
        for _ in range(3):
            cx, cy = rng.uniform(0, size, 2)
            dx, dy = xx - cx, yy - cy
            radius = np.hypot(dx, dy)
            field += np.sin(np.arctan2(dy, dx) * 3 + radius * 0.45 + rng.uniform(0, 2 * np.pi)) * np.exp(-radius / size)
        strokes = 0.5 + 0.5 * np.tanh(2.5 * field)
        palette = np.asarray([28, 52, 150], float) * (1 - strokes[..., None]) + np.asarray([246, 206, 60], float) * strokes[..., None]
        return 0.6 * array + 0.4 * palette
    if style == "oil_painting":
        warm = array * np.asarray([1.0, 0.86, 0.62]) + np.asarray([34, 20, 4])
        blocks = warm.reshape(size // 4, 4, size // 4, 4, 3).mean(axis=(1, 3))
        blotchy = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
        out = 0.5 * warm + 0.5 * blotchy
        border = 4
        frame = np.zeros((size, size), bool)
        frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
        out[frame] = np.asarray([196, 150, 52])
        return out
    if style == "realistic":
        grey = array.mean(axis=2, keepdims=True)
        muted = 0.6 * array + 0.4 * grey
        radius = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
        vignette = np.clip(1.0 - 0.75 * radius**2.2, 0.15, 1.0)
        grain = rng.normal(0, 7, size=(size, size, 1))
        return muted * vignette[..., None] + grain
    raise ValueError(f"unknown style {style!r}; expected van_gogh, oil_painting or realistic")


# ---------------------------------------------------------------------------------------------
# Layout and clips.


def _layout(scene: SceneDescription, size: int, rng: np.random.Generator) -> list[tuple[str, dict]]:
    """Place each subject: (key, start pose fields, motion path) in canvas pixels."""
    kinds = {key: spec["kind"] for key, spec in load_world()["concepts"].items()}
    subjects = list(scene.subjects)
    ground = size * rng.uniform(0.86, 0.95)
    placed = []
    towers = [s for s in subjects if kinds[s] == "tower"]
    others = [s for s in subjects if kinds[s] != "tower"]
    if towers:
        tower_x = size * rng.uniform(0.42, 0.58)
        if others and scene.relation != "on":
            tower_x = size * rng.uniform(0.58, 0.68)
        placed.append((towers[0], dict(x=tower_x, ground=ground, height=size * rng.uniform(0.8, 0.9), moves=False)))
        if others:
            if scene.relation == "on":
                x = tower_x + rng.uniform(-3, 3)
                base = ground - size * rng.uniform(0.1, 0.3)
            else:
                x = size * rng.uniform(0.2, 0.28)
                base = ground
            placed.append((others[0], dict(x=x, ground=base, height=size * rng.uniform(0.32, 0.4), moves=True)))
        return placed
    if len(others) == 2:
        first, second = others
        placed.append((first, dict(x=size * rng.uniform(0.26, 0.34), ground=ground,
                                   height=size * rng.uniform(0.5, 0.6), moves=True)))
        placed.append((second, dict(x=size * rng.uniform(0.7, 0.76), ground=ground,
                                    height=size * rng.uniform(0.42, 0.52), moves=False)))
        return placed
    if others:
        key = others[0]
        height = size * rng.uniform(0.55, 0.72)
        if key in ("wolf", "polar_bear", "cat"):
            height *= 0.85
        placed.append((key, dict(x=size * rng.uniform(0.38, 0.62), ground=ground, height=height, moves=True)))
    return placed


def _pose_at(spec: dict, motion: str | None, phase: float, size: int, facing: int) -> Pose:
    x, ground = spec["x"], spec["ground"]
    if spec["moves"] and motion is not None:
        travel = size * 0.22
        if motion == "walking":
            x += facing * (phase - 0.5) * travel
        elif motion == "flying":
            x += facing * (phase - 0.5) * travel * 0.5
            ground -= phase * size * 0.18 - 2 * math.sin(2 * math.pi * 2 * phase)
        elif motion == "climbing":
            ground -= phase * size * 0.22
        elif motion == "dancing":
            ground -= size * 0.04 * abs(math.sin(2 * math.pi * 2 * phase))
    return Pose(x=x, ground=ground, height=spec["height"], phase=phase, motion=motion if spec["moves"] else (
        "playing" if motion == "playing" else None), facing=facing)


def render_clip(scene: SceneDescription, seed: int, num_frames: int = 8, size: int = 32,
                phases: np.ndarray | None = None) -> np.ndarray:
    """Render `scene` as uint8 frames `(num_frames, size, size, 3)`; the same seed gives the same pixels."""
    rng = np.random.default_rng(seed)
    canvas = size * SUPERSAMPLING
    background = _draw_background(scene.scene, canvas, rng)
    layout = _layout(scene, canvas, rng)
    facing = 1 if rng.random() < 0.5 else -1
    style_seed = int(rng.integers(2**31))
    if phases is None:
        phases = np.arange(num_frames) / num_frames
    frames = []
    for phase in phases:
        image = background.copy()
        draw = ImageDraw.Draw(image)
        for key, spec in layout:
            pose = _pose_at(spec, scene.motion, float(phase), canvas, facing)
            if key in ("man", "elon_musk") and scene.wearing == "space_suit":
                (_draw_man if key == "man" else _draw_elon)(draw, pose, suit=True)
            else:
                SPRITES[key](draw, pose)
        array = _apply_style(np.asarray(image, dtype=float), scene.style, np.random.default_rng(style_seed))
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
        frames.append(np.asarray(image.resize((size, size), Image.BOX)))
    return np.stack(frames)


def render_image(scene: SceneDescription, seed: int, size: int = 32) -> np.ndarray:
    """Render one still `(size, size, 3)` uint8: a random moment of the scene's motion."""
    phase = np.random.default_rng(seed + 7_919).uniform(0, 1)
    return render_clip(scene, seed, size=size, phases=np.asarray([phase]))[0]
