"""The stream shapes of real servers the tests replay: the catalogue lives in
:mod:`trioproxy.testing.shapes` (the mock upstream replays it too), each shape
naming the source it was read from."""

from trioproxy.testing.shapes import SHAPES, Shape, build

__all__ = ["SHAPES", "Shape", "build"]
