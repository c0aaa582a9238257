"""Shapes of tensor values, relative to their parameter's matrix view.

A parameter of two or more dimensions is seen as a batch of matrices of R rows and C columns
(its last two dimensions; torch's Adafactor factors those, and Muon takes 2-D parameters
only). A tensor value's shape is a pair of symbolic dimensions, each one of:

- ``R`` and ``C``: the parameter's rows and columns;
- ``S`` and ``L``: the shorter and the longer of the two (``wide(x)`` turns an R x C matrix
  into S x L by transposing a taller one, as Muon's Newton-Schulz does);
- ``1``: a dimension of size one, that broadcasts.

``P = (R, C)`` is the parameter's own shape: every element-wise value of a program, and the
only shape a 1-D parameter has (its R x C view then means nothing, and a matrix operation on
it is an error at run time naming the parameter). ``(R, 1)`` is one value per row (a row
statistic), ``(1, C)`` one per column, ``(1, 1)`` one per matrix of the batch. Shapes
broadcast as NumPy's do; matrix products need matching inner dimensions.
"""

from __future__ import annotations

Shape = tuple[str, str]

P: Shape = ("R", "C")
DIMS = ("R", "C", "S", "L", "1")


class ShapeError(Exception):
    """Shapes that do not fit together (the checker reports it at the expression)."""


def show(shape: Shape | None) -> str:
    shape = shape or P
    names = {"R": "rows", "C": "cols", "S": "short", "L": "long", "1": "1"}
    return f"({names[shape[0]]} x {names[shape[1]]})"


def broadcast(shapes: list[Shape]) -> Shape:
    """The shape of an element-wise result (NumPy broadcasting, symbolically)."""
    out = ["1", "1"]
    for shape in shapes:
        for i, dim in enumerate(shape):
            if dim == "1" or dim == out[i]:
                continue
            if out[i] != "1":
                raise ShapeError(f"shapes {show(tuple(out))} and {show(shape)} do not "
                                 f"broadcast together")
            out[i] = dim
    return (out[0], out[1])


def matmul(a: Shape, b: Shape) -> Shape:
    if a[1] != b[0]:
        raise ShapeError(f"a matrix product needs the columns of the left {show(a)} to match "
                         f"the rows of the right {show(b)}")
    return (a[0], b[1])


def transpose(a: Shape) -> Shape:
    return (a[1], a[0])


def wide(a: Shape) -> Shape:
    if a != P:
        raise ShapeError(f"wide() takes a parameter-shaped matrix (rows x cols), not {show(a)}")
    return ("S", "L")


def unwide(a: Shape) -> Shape:
    if a != ("S", "L"):
        raise ShapeError(f"unwide() takes what wide() gives (short x long), not {show(a)}")
    return P


def along_rows(a: Shape) -> Shape:
    """A statistic of each row (reduced over the columns)."""
    return (a[0], "1")


def along_cols(a: Shape) -> Shape:
    """A statistic of each column (reduced over the rows)."""
    return ("1", a[1])
