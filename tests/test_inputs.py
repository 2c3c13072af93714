"""Seeded input sets: sample i depends on (seed, i) alone, and the bytes do not drift."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.inputs import seeded
from parity.inputs.seeded import ArraySpec, InputSpec, digest, generate, sample

SPEC = InputSpec(
    seed=42,
    count=8,
    arrays=(
        ArraySpec("img", (16, 16), "uint8", "image"),
        ArraySpec("noise", (5,), "float32", "normal", {"mean": 1.0, "std": 2.0}),
        ArraySpec("u", (3,), "float64", "uniform", {"low": -2.0, "high": 2.0}),
    ),
)


@given(st.integers(0, 2**32), st.integers(0, 50), st.integers(1, 60))
def test_sample_i_depends_on_seed_and_i_only(seed: int, i: int, count: int) -> None:
    spec = InputSpec(seed=seed, count=max(count, i + 1), arrays=SPEC.arrays)
    whole = generate(spec)
    alone = sample(spec, i)
    for name, value in alone.items():
        np.testing.assert_array_equal(whole[name][i], value)


def test_any_batching_gives_each_sample_its_own_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate() computes many samples at once, in batches of about `_BATCH_VALUES`
    values: however they are cut, sample i has the bytes `sample` gives it alone."""
    spec = InputSpec(
        seed=9,
        count=7,
        arrays=(
            ArraySpec("rgb", (5, 4, 3), "uint8", "image", layout="channels_last"),
            ArraySpec("planes", (2, 6, 5), "float64", "image"),
            ArraySpec("dot", (1, 1), "float32", "image"),  # one pixel: a flat image, 0.5
            ArraySpec("row", (6,), "float64", "image"),
            ArraySpec("z", (3, 2), "float64", "normal", {"mean": 1.0, "std": 3.0}),
            ArraySpec("u", (4,), "int16", "uniform"),
        ),
    )
    alone = [sample(spec, i) for i in range(spec.count)]
    assert {float(one["dot"].item()) for one in alone} == {0.5}
    for batch in (1, 30, 1 << 20):  # one sample at a time, a few, all of them
        monkeypatch.setattr(seeded, "_BATCH_VALUES", batch)
        whole = generate(spec)
        for i, one in enumerate(alone):
            for name, value in one.items():
                assert whole[name].dtype == value.dtype
                assert whole[name][i].tobytes() == value.tobytes(), (batch, name, i)


def test_shapes_dtypes_and_ranges() -> None:
    data = generate(SPEC)
    assert data["img"].shape == (8, 16, 16) and data["img"].dtype == np.uint8
    assert data["img"].min() == 0 and data["img"].max() == 255  # min-max normalized images
    assert data["noise"].dtype == np.float32
    assert np.all((data["u"] >= -2) & (data["u"] < 2))


def test_different_seeds_give_different_inputs() -> None:
    other = InputSpec(seed=43, count=8, arrays=SPEC.arrays)
    assert digest(generate(SPEC)) != digest(generate(other))


def test_input_bytes_are_stable() -> None:
    # Golden digest: if this changes, every recorded parity result changes with it.
    assert digest(generate(SPEC)) == GOLDEN


GOLDEN = "sha256:4ecf340ef85530e40a08c5916ba9e11a9a87e6b5b37c40d5409c83034b70ee74"


def _image_set(shape: tuple[int, ...], layout: str | None = None, seed: int = 3) -> np.ndarray:
    spec = InputSpec(seed, 6, (ArraySpec("x", shape, "float64", "image", layout=layout),))
    return generate(spec)["x"]


def _step(images: np.ndarray, axis: int) -> float:
    """The mean absolute difference between neighbours along `axis` (values span 0..1)."""
    return float(np.abs(np.diff(images, axis=axis)).mean())


def test_channels_last_images_are_smooth_across_both_spatial_axes() -> None:
    last = _image_set((32, 32, 3), "channels_last")
    first = _image_set((3, 32, 32))
    assert last.shape == (6, 32, 32, 3)
    # Each channel is one smooth 32x32 image: neighbours along both spatial axes are
    # close, channels are independent planes (far apart), as in the channels_first image.
    for images, (rows, cols, channels) in ((last, (1, 2, 3)), (first, (2, 3, 1))):
        assert _step(images, rows) < 0.15 and _step(images, cols) < 0.15
        assert _step(images, channels) > 2 * max(_step(images, rows), _step(images, cols))
    # Noise, for scale: neighbours are a third of the range apart.
    assert _step(generate(InputSpec(3, 6, (ArraySpec("x", (32, 32, 3), "float64"),)))["x"], 1) > 0.3
    # Moving the channel axis first gives the channels_first image, the same planes.
    np.testing.assert_array_equal(np.moveaxis(last, -1, 1), first)


def test_without_a_layout_the_last_two_axes_stay_spatial() -> None:
    # Existing configs keep their bytes: no layout is channels_first, and a [32, 32, 3]
    # shape is still 32 separate 32x3 images (rows of one sample are unrelated).
    for shape in ((3, 16, 16), (2, 3, 8, 8), (32, 32, 3)):
        spec = InputSpec(1, 3, (ArraySpec("x", shape, "uint8", "image"),))
        explicit = InputSpec(
            1, 3, (ArraySpec("x", shape, "uint8", "image", layout="channels_first"),)
        )
        assert digest(generate(spec)) == digest(generate(explicit))
        assert "layout" not in spec.describe()["arrays"]["x"]
    striped = _image_set((32, 32, 3))
    assert _step(striped, 1) > 0.2 and _step(striped, 2) < 0.15


def test_an_image_shape_that_looks_channels_last_gets_a_warning() -> None:
    def warnings(shape: tuple[int, ...], layout: str | None = None) -> list[str]:
        array = ArraySpec("img", shape, "uint8", "image", layout=layout)
        return InputSpec(1, 1, (array,)).warnings()

    (warning,) = warnings((64, 64, 3))
    assert "inputs.arrays.img" in warning and 'layout = "channels_last"' in warning
    assert "64 images of 64x3 pixels" in warning
    assert len(warnings((1, 28, 28, 1))) == 1
    assert warnings((64, 64, 3), "channels_last") == []
    assert warnings((64, 64, 3), "channels_first") == []  # said explicitly: no warning
    assert warnings((3, 64, 64)) == [] and warnings((64, 3)) == []
    assert InputSpec(1, 1, (ArraySpec("u", (64, 64, 3), "uint8"),)).warnings() == []
