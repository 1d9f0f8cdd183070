"""The class-matrix picture: colours by value, undefined cells grey, sizes kept small."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.exporter.heatmap import NEGATIVE, POSITIVE, TARGET, UNDEFINED, WHITE, matrix_image


def test_each_value_gets_its_colour_in_its_cell() -> None:
    matrix = [[1.0, 0.0], [-1.0, None]]
    image = matrix_image(matrix)
    cell = TARGET // 2
    assert image.shape == (2 * cell, 2 * cell, 3) and image.dtype == np.uint8
    corners = {(a, b): image[a * cell, b * cell].tolist() for a in range(2) for b in range(2)}
    assert corners[0, 0] == POSITIVE.tolist()
    assert corners[0, 1] == WHITE.tolist()
    assert corners[1, 0] == NEGATIVE.tolist()
    assert corners[1, 1] == UNDEFINED.tolist()
    # A whole cell is one colour: rows are the class of x1, columns the class of x2.
    assert (image[:cell, cell:] == 255).all()


def test_half_way_is_half_way_to_the_colour_and_values_beyond_one_are_clipped() -> None:
    image = matrix_image([[0.5, 3.0], [-0.5, -3.0]])
    cell = TARGET // 2
    assert image[0, 0].tolist() == np.rint(WHITE + 0.5 * (POSITIVE - WHITE)).tolist()
    assert image[cell, 0].tolist() == np.rint(WHITE + 0.5 * (NEGATIVE - WHITE)).tolist()
    assert image[0, cell].tolist() == POSITIVE.tolist()
    assert image[cell, cell].tolist() == NEGATIVE.tolist()


def test_a_large_matrix_is_averaged_in_blocks_down_to_a_small_picture() -> None:
    rng = np.random.default_rng(0)
    size = 3 * TARGET - 1  # not a multiple of the block: the last blocks are partial
    values = rng.uniform(-1, 1, (size, size))
    values[:3, :3] = np.nan  # a block with nothing defined stays undefined
    values[3, 4] = np.nan  # a block with some undefined cells averages the rest
    image = matrix_image([[None if np.isnan(v) else float(v) for v in row] for row in values])
    assert image.shape == (TARGET, TARGET, 3)
    assert image[0, 0].tolist() == UNDEFINED.tolist()
    mean = float(np.nanmean(values[3:6, 3:6]))
    towards = POSITIVE if mean >= 0 else NEGATIVE
    assert image[1, 1].tolist() == np.rint(WHITE + abs(mean) * (towards - WHITE)).tolist()
    corner = float(np.mean(values[3 * (TARGET - 1) :, 3 * (TARGET - 1) :]))
    towards = POSITIVE if corner >= 0 else NEGATIVE
    expected = np.rint(WHITE + abs(corner) * (towards - WHITE)).tolist()
    assert image[-1, -1].tolist() == expected


@pytest.mark.parametrize(
    ("matrix", "fragment"),
    [([], "at least one class"), ([[1.0, 0.0]], "square"), ([[1.0, 0.0], [1.0]], "square")],
    ids=["empty", "wide", "ragged"],
)
def test_what_is_not_a_square_matrix_is_refused(
    matrix: list[list[float | None]], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        matrix_image(matrix)
