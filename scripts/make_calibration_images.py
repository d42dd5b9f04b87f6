"""Write the image-text half of the embedded calibration set: ``images/*.png`` + ``conversations.json``.

The embedded set must work on a machine with no network, so its images are drawn here with PIL
(shapes, gradients, charts, text in PIL's built-in bitmap font) instead of being downloaded. Each
scene is drawn by a small function and described by a short LLaVA-style conversation written next
to it, so the answers are true of the pixels. Nothing is random: the same Pillow build writes the
same bytes, which a test checks by regenerating into a temporary folder.

    python scripts/make_calibration_images.py               # rewrites calibration/
    python scripts/make_calibration_images.py --out /tmp/x

Tests import this file by putting ``scripts/`` on ``sys.path``; the package never imports it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 224  # a multiple of 14 and 16, the patch sizes of common vision towers
IMAGE_FOLDER = "images"
CONVERSATIONS_FILE = "conversations.json"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "calibration"

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
RED = (220, 30, 30)
GREEN = (40, 160, 60)
BLUE = (40, 80, 200)
YELLOW = (245, 200, 30)
GREY = (128, 128, 128)
LIGHT_GREY = (225, 225, 225)
NAVY = (20, 30, 90)
BROWN = (120, 75, 40)

Turns = list[tuple[str, str]]  # (human, gpt) pairs; the first human turn holds "<image>"


@dataclass(frozen=True)
class Scene:
    name: str
    draw: Callable[[Image.Image, ImageDraw.ImageDraw], None]
    turns: Turns


def canvas(background: tuple[int, int, int] = WHITE) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (SIZE, SIZE), background)
    return image, ImageDraw.Draw(image)


def draw_text(image: Image.Image, text: str, center: tuple[int, int], scale: int, fill) -> None:
    """Bitmap-font text scaled up with nearest-neighbour: legible, and free of FreeType versions."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    mask = mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)
    corner = (center[0] - mask.width // 2, center[1] - mask.height // 2)
    image.paste(Image.new("RGB", mask.size, fill), corner, mask)


def fill_pixels(image: Image.Image, colour_at: Callable[[int, int], tuple[int, int, int]]) -> None:
    image.putdata([colour_at(x, y) for y in range(SIZE) for x in range(SIZE)])


def mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(round(u + (v - u) * t) for u, v in zip(a, b, strict=True))  # type: ignore[return-value]


# ---- scenes --------------------------------------------------------------------------------------


def red_circle(image, draw):
    draw.ellipse((52, 52, 172, 172), fill=RED)


def square_and_triangle(image, draw):
    image.paste(LIGHT_GREY, (0, 0, SIZE, SIZE))
    draw.rectangle((20, 72, 100, 152), fill=BLUE)
    draw.polygon([(164, 72), (124, 152), (204, 152)], fill=YELLOW)


def checkerboard(image, draw):
    cell = SIZE // 8
    for row in range(8):
        for col in range(8):
            if (row + col) % 2 == 0:
                draw.rectangle(
                    (col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1), fill=BLACK
                )


def gradient_horizontal(image, draw):
    for x in range(SIZE):
        level = round(255 * x / (SIZE - 1))
        draw.line((x, 0, x, SIZE - 1), fill=(level, level, level))


def gradient_sunset(image, draw):
    for y in range(SIZE):
        draw.line((0, y, SIZE - 1, y), fill=mix((15, 25, 90), (250, 140, 30), y / (SIZE - 1)))


def bar_chart(image, draw):
    values = {"A": 3, "B": 7, "C": 5, "D": 9}
    draw.line((24, 24, 24, 190), fill=BLACK, width=2)
    draw.line((24, 190, 210, 190), fill=BLACK, width=2)
    for index, (label, value) in enumerate(values.items()):
        left = 40 + index * 44
        draw.rectangle((left, 190 - value * 16, left + 28, 189), fill=BLUE)
        draw_text(image, label, (left + 14, 206), 2, BLACK)
        draw_text(image, str(value), (left + 14, 190 - value * 16 - 12), 2, BLACK)


def line_chart(image, draw):
    values = [1, 2, 4, 3, 6]
    draw.line((24, 24, 24, 200), fill=BLACK, width=2)
    draw.line((24, 200, 210, 200), fill=BLACK, width=2)
    points = [(44 + i * 40, 200 - v * 28) for i, v in enumerate(values)]
    draw.line(points, fill=GREEN, width=4)
    for x, y in points:
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=GREEN)


def pie_chart(image, draw):
    box = (32, 32, 192, 192)
    draw.pieslice(box, -90, 90, fill=BLUE)
    draw.pieslice(box, 90, 180, fill=RED)
    draw.pieslice(box, 180, 270, fill=GREEN)


def hello_text(image, draw):
    draw_text(image, "HELLO", (SIZE // 2, SIZE // 2), 6, BLACK)


def stop_sign(image, draw):
    radius = 96
    corners = [
        (
            SIZE / 2 + radius * math.cos(math.radians(22.5 + 45 * k)),
            SIZE / 2 + radius * math.sin(math.radians(22.5 + 45 * k)),
        )
        for k in range(8)
    ]
    draw.polygon(corners, fill=RED)
    draw_text(image, "STOP", (SIZE // 2, SIZE // 2), 5, WHITE)


def traffic_light(image, draw):
    draw.rectangle((77, 12, 147, 212), fill=(50, 50, 50))
    for index, colour in enumerate([(235, 30, 30), (90, 75, 20), (20, 70, 30)]):
        top = 22 + index * 64
        draw.ellipse((87, top, 137, top + 50), fill=colour)


def target(image, draw):
    for index, radius in enumerate((100, 80, 60, 40, 20)):
        centre = SIZE // 2
        draw.ellipse(
            (centre - radius, centre - radius, centre + radius, centre + radius),
            fill=RED if index % 2 == 0 else WHITE,
        )


def dot_grid(image, draw):
    colours = [RED, GREEN, BLUE, YELLOW, (130, 50, 170), (245, 130, 20), BLACK, GREY, (30, 200, 220)]
    for index, colour in enumerate(colours):
        x, y = 52 + (index % 3) * 60, 52 + (index // 3) * 60
        draw.ellipse((x - 20, y - 20, x + 20, y + 20), fill=colour)


def house(image, draw):
    image.paste((170, 215, 245), (0, 0, SIZE, 170))
    image.paste((70, 170, 70), (0, 170, SIZE, SIZE))
    draw.rectangle((62, 100, 162, 180), fill=BROWN)
    draw.polygon([(50, 100), (174, 100), (112, 44)], fill=RED)
    draw.rectangle((100, 138, 124, 180), fill=(50, 30, 20))


def sun_over_sea(image, draw):
    image.paste((180, 220, 250), (0, 0, SIZE, SIZE // 2))
    image.paste(NAVY, (0, SIZE // 2, SIZE, SIZE))
    draw.ellipse((82, 30, 142, 90), fill=YELLOW)


def diagonal_stripes(image, draw):
    # Colour by x + y: stripes are the lines x + y = c, which run from bottom left to top right.
    fill_pixels(image, lambda x, y: NAVY if ((x + y) // 16) % 2 == 0 else WHITE)


def number_42(image, draw):
    draw_text(image, "42", (SIZE // 2, SIZE // 2), 9, BLUE)


def arrows(image, draw):
    for row in range(3):
        y = 52 + row * 60
        draw.rectangle((40, y - 6, 150, y + 6), fill=BLACK)
        draw.polygon([(150, y - 22), (190, y), (150, y + 22)], fill=BLACK)


def smiley(image, draw):
    draw.ellipse((22, 22, 202, 202), fill=YELLOW, outline=BLACK, width=3)
    draw.ellipse((70, 70, 94, 100), fill=BLACK)
    draw.ellipse((130, 70, 154, 100), fill=BLACK)
    draw.arc((62, 90, 162, 170), 20, 160, fill=BLACK, width=6)


def tree(image, draw):
    draw.rectangle((100, 130, 124, 210), fill=BROWN)
    draw.ellipse((52, 30, 172, 150), fill=GREEN)


def table(image, draw):
    rows = [("ITEM", "QTY"), ("APPLE", "3"), ("PEAR", "5"), ("PLUM", "2")]
    for index, (item, qty) in enumerate(rows):
        top = 24 + index * 44
        if index == 0:
            draw.rectangle((16, top, 208, top + 44), fill=LIGHT_GREY)
        draw_text(image, item, (76, top + 22), 3, BLACK)
        draw_text(image, qty, (168, top + 22), 3, BLACK)
    for index in range(5):
        draw.line((16, 24 + index * 44, 208, 24 + index * 44), fill=BLACK, width=2)
    for x in (16, 136, 208):
        draw.line((x, 24, x, 200), fill=BLACK, width=2)


def colour_swatches(image, draw):
    for index, (colour, letter) in enumerate(((RED, "R"), (GREEN, "G"), (BLUE, "B"))):
        left = 16 + index * 68
        draw.rectangle((left, 50, left + 56, 130), fill=colour)
        draw_text(image, letter, (left + 28, 160), 4, BLACK)


def clock(image, draw):
    centre = SIZE // 2
    draw.ellipse((16, 16, 208, 208), fill=WHITE, outline=BLACK, width=4)
    for hour in range(12):
        angle = math.radians(hour * 30 - 90)
        outer, inner = 90, 78
        draw.line(
            (
                centre + outer * math.cos(angle),
                centre + outer * math.sin(angle),
                centre + inner * math.cos(angle),
                centre + inner * math.sin(angle),
            ),
            fill=BLACK,
            width=3,
        )
    draw.line((centre, centre, centre + 50, centre), fill=BLACK, width=7)  # hour hand at 3
    draw.line((centre, centre, centre, centre - 75), fill=BLACK, width=4)  # minute hand at 12


def staircase(image, draw):
    for step in range(5):
        left = 12 + step * 40
        draw.rectangle((left, 200 - (step + 1) * 34, left + 36, 200), fill=GREY)


SCENES: list[Scene] = [
    Scene(
        "red_circle",
        red_circle,
        [
            ("<image>\nWhat is in this picture?", "A single red circle in the middle of a white background."),
            ("Is the circle filled or only outlined?", "It is filled with solid red."),
        ],
    ),
    Scene(
        "square_and_triangle",
        square_and_triangle,
        [
            (
                "<image>\nList the shapes you can see and their colors.",
                "There are two shapes on a light grey background: a blue square on the left and a yellow triangle on the right.",
            ),
        ],
    ),
    Scene(
        "checkerboard",
        checkerboard,
        [
            (
                "<image>\nDescribe the pattern.",
                "It is a checkerboard of eight by eight squares that alternate between black and white, like a chess board.",
            ),
            ("What color is the top-left square?", "The top-left square is black."),
        ],
    ),
    Scene(
        "gradient_horizontal",
        gradient_horizontal,
        [
            (
                "<image>\nHow does the brightness change across the image?",
                "The image is a smooth horizontal gradient: it is black at the left edge and grows steadily lighter until it is white at the right edge.",
            ),
        ],
    ),
    Scene(
        "gradient_sunset",
        gradient_sunset,
        [
            (
                "What colors does this image contain?\n<image>",
                "It fades from dark blue at the top to orange at the bottom, a bit like the sky at sunset.",
            ),
        ],
    ),
    Scene(
        "bar_chart",
        bar_chart,
        [
            (
                "<image>\nWhich bar is the tallest, and which is the shortest?",
                "Bar D is the tallest with a value of 9, and bar A is the shortest with a value of 3.",
            ),
            ("What is the total of all four bars?", "The bars show 3, 7, 5 and 9, which add up to 24."),
        ],
    ),
    Scene(
        "line_chart",
        line_chart,
        [
            (
                "<image>\nDescribe the trend shown in this chart.",
                "The green line rises from left to right over five points. It dips once, at the fourth point, and then climbs to its highest value at the last point.",
            ),
        ],
    ),
    Scene(
        "pie_chart",
        pie_chart,
        [
            (
                "<image>\nWhat share of the pie is blue?",
                "Blue fills half of the pie. Red and green take a quarter each.",
            ),
        ],
    ),
    Scene(
        "hello_text",
        hello_text,
        [
            (
                "<image>\nWhat word is written in the image?",
                "The image shows the word HELLO in black capital letters on a white background.",
            ),
        ],
    ),
    Scene(
        "stop_sign",
        stop_sign,
        [
            (
                "<image>\nWhat kind of sign is this, and what does it mean?",
                "It is a red octagonal stop sign with the word STOP in white letters. It tells drivers to come to a complete stop.",
            ),
        ],
    ),
    Scene(
        "traffic_light",
        traffic_light,
        [
            (
                "<image>\nWhich light is on?",
                "The top light is lit and it is red, so traffic has to stop. The yellow and green lights below it are dark.",
            ),
        ],
    ),
    Scene(
        "target",
        target,
        [
            (
                "<image>\nDescribe this image.",
                "It is a target made of five concentric circles that alternate red and white, with a red bullseye in the centre.",
            ),
        ],
    ),
    Scene(
        "dot_grid",
        dot_grid,
        [
            (
                "<image>\nWhat color is the dot in the centre of the grid?",
                "The centre dot is purple. The grid has nine dots in three rows of three.",
            ),
            ("Which colors are in the top row?", "From left to right: red, green and blue."),
        ],
    ),
    Scene(
        "house",
        house,
        [
            (
                "<image>\nDescribe this drawing.",
                "It is a simple drawing of a house: a brown square wall with a red triangular roof and a dark door, standing on green grass under a light blue sky.",
            ),
        ],
    ),
    Scene(
        "sun_over_sea",
        sun_over_sea,
        [
            (
                "<image>\nWhat scene does this picture show?",
                "A yellow sun in a pale blue sky above a dark blue sea. The horizon runs straight across the middle of the image.",
            ),
        ],
    ),
    Scene(
        "diagonal_stripes",
        diagonal_stripes,
        [
            (
                "<image>\nWhich direction do the stripes run?",
                "The navy and white stripes run diagonally, from the bottom left towards the top right.",
            ),
        ],
    ),
    Scene(
        "number_42",
        number_42,
        [
            ("<image>\nWhat number is shown?", "The number 42, written in blue."),
            ("What is that number plus eight?", "42 plus 8 is 50."),
        ],
    ),
    Scene(
        "arrows",
        arrows,
        [
            (
                "<image>\nHow many arrows are there, and where do they point?",
                "There are three black arrows, one above the other, and all of them point to the right.",
            ),
        ],
    ),
    Scene(
        "smiley",
        smiley,
        [
            (
                "<image>\nWhat emotion does this face show?",
                "It is a yellow smiley face with two black eyes and a curved smile, so it looks happy.",
            ),
        ],
    ),
    Scene(
        "tree",
        tree,
        [
            (
                "<image>\nWhat is drawn here?",
                "A simple tree: a brown rectangular trunk topped by a round green crown.",
            ),
        ],
    ),
    Scene(
        "table",
        table,
        [
            (
                "<image>\nRead the table. How many pears are listed?",
                "The table has two columns, ITEM and QTY, and it lists 5 pears.",
            ),
            ("How many fruits are there in total?", "3 apples, 5 pears and 2 plums make 10 fruits."),
        ],
    ),
    Scene(
        "colour_swatches",
        colour_swatches,
        [
            (
                "<image>\nWhat do the letters under the color patches stand for?",
                "The three patches are red, green and blue, and the letters R, G and B under them are the first letters of those colors.",
            ),
        ],
    ),
    Scene(
        "clock",
        clock,
        [
            (
                "<image>\nWhat time does the clock show?",
                "The short hour hand points to 3 and the long minute hand points straight up to 12, so it shows three o'clock.",
            ),
        ],
    ),
    Scene(
        "staircase",
        staircase,
        [
            (
                "<image>\nDescribe the shape formed by the blocks.",
                "Five grey blocks of increasing height stand side by side and form a staircase that climbs from left to right.",
            ),
        ],
    ),
]


def render(scene: Scene) -> Image.Image:
    image, draw = canvas()
    scene.draw(image, draw)
    return image


def conversation(scene: Scene) -> dict:
    turns = []
    for human, gpt in scene.turns:
        turns += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return {"id": scene.name, "image": f"{IMAGE_FOLDER}/{scene.name}.png", "conversations": turns}


def make_calibration_images(out: Path) -> list[Path]:
    """Write ``out/images/<scene>.png`` and ``out/conversations.json``; return the written paths."""
    image_dir = out / IMAGE_FOLDER
    image_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scene in SCENES:
        path = image_dir / f"{scene.name}.png"
        render(scene).save(path, format="PNG", optimize=True)  # no text chunks, so no timestamps
        written.append(path)
    conversations = out / CONVERSATIONS_FILE
    conversations.write_text(
        json.dumps([conversation(scene) for scene in SCENES], indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    return [*written, conversations]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder to write (default: calibration/)"
    )
    args = parser.parse_args(argv)
    paths = make_calibration_images(args.out)
    total = sum(path.stat().st_size for path in paths)
    print(f"wrote {len(paths)} files ({total / 1024:.1f} KiB) under {args.out}")


if __name__ == "__main__":
    main()
