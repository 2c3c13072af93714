"""envlock.installable: whether pinned versions can be installed together, from metadata.

The metadata is real `*.dist-info/METADATA` files in folders laid out as a venv's
site-packages (what the reference and candidate environments hold); the requirements are
the ones scipy 1.11.4 and scikit-learn 1.3.2 publish."""

from __future__ import annotations

from pathlib import Path

from envlock.installable import (
    PinnedMetadata,
    conflicts,
    installable_closure,
    marker_environment,
    site_packages,
)

REFERENCE = {"numpy": "1.26.4", "scipy": "1.11.4", "scikit-learn": "1.3.2", "joblib": "1.3.2"}
CANDIDATE = {"numpy": "2.2.6", "scipy": "1.15.3", "scikit-learn": "1.6.1", "joblib": "1.4.2"}
REQUIRES = {
    ("scipy", "1.11.4"): ["numpy<1.28.0,>=1.21.6", "pytest; extra == 'test'"],
    ("scipy", "1.15.3"): ["numpy<2.5,>=1.23.5"],
    ("scikit-learn", "1.3.2"): ["numpy<2.0,>=1.17.3", "scipy>=1.5.0", "joblib>=1.1.1"],
    ("scikit-learn", "1.6.1"): ["numpy>=1.19.5", "scipy>=1.6.0", "joblib>=1.2.0"],
    ("joblib", "1.3.2"): ["colorama; sys_platform == 'nonesuch'"],
}


def venv(root: Path, pins: dict[str, str]) -> Path:
    folder = root / "lib" / "python3.11" / "site-packages"
    for name, version in pins.items():
        info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in REQUIRES.get((name, version), [])]
        (info / "METADATA").write_text("\n".join(lines) + "\n")
    return root


def metadata(tmp_path: Path) -> PinnedMetadata:
    folders = site_packages(venv(tmp_path / "ref", REFERENCE)) + site_packages(
        venv(tmp_path / "cand", CANDIDATE)
    )
    return PinnedMetadata(folders, network=False)


def test_a_pin_that_breaks_a_requirement_is_named_with_the_requirement(tmp_path: Path) -> None:
    md = metadata(tmp_path)
    found = conflicts({**REFERENCE, "numpy": "2.2.6"}, md, marker_environment())
    assert [c.describe() for c in found] == [
        "scikit-learn 1.3.2 requires numpy<2.0,>=1.17.3 (not numpy 2.2.6)",
        "scipy 1.11.4 requires numpy<1.28.0,>=1.21.6 (not numpy 2.2.6)",
    ]
    # Markers that do not hold here (an extra, another platform) require nothing.
    assert conflicts(REFERENCE, md, marker_environment()) == []


def test_numpy_cannot_move_alone_it_drags_scipy_and_scikit_learn(tmp_path: Path) -> None:
    closure = installable_closure(
        REFERENCE, CANDIDATE, ["numpy"], metadata(tmp_path), marker_environment()
    )
    assert closure.installable
    assert closure.packages == ("numpy", "scikit-learn", "scipy")
    assert {
        mover: {n: why.short() for n, why in moved.items()}
        for mover, moved in closure.drags().items()
    } == {
        "numpy": {
            "scikit-learn": "scikit-learn 1.3.2 requires numpy<2.0,>=1.17.3",
            "scipy": "scipy 1.11.4 requires numpy<1.28.0,>=1.21.6",
        }
    }
    assert closure.resolutions == 2
    # scipy 1.15.3 accepts NumPy 1.26: it moves alone, one resolution.
    alone = installable_closure(
        REFERENCE, CANDIDATE, ["scipy"], metadata(tmp_path / "b"), marker_environment()
    )
    assert alone.packages == ("scipy",) and not alone.dragged and alone.resolutions == 1


def test_what_no_differing_package_can_fix_is_not_installable(tmp_path: Path) -> None:
    # The candidate's scikit-learn wants a joblib neither side pins.
    reference = dict(REFERENCE)
    candidate = {**CANDIDATE, "joblib": "1.3.2"}
    md = PinnedMetadata(
        site_packages(venv(tmp_path / "r", reference))
        + site_packages(venv(tmp_path / "c", {"scikit-learn": "1.6.1", "scipy": "1.15.3"})),
        network=False,
    )
    info = next((tmp_path / "c").rglob("scikit_learn-1.6.1.dist-info"))
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: scikit-learn\nVersion: 1.6.1\nRequires-Dist: joblib>=1.4\n"
    )
    closure = installable_closure(reference, candidate, ["scikit-learn"], md, marker_environment())
    assert not closure.installable
    assert [c.describe() for c in closure.broken] == [
        "scikit-learn 1.6.1 requires joblib>=1.4 (not joblib 1.3.2)"
    ]
    # numpy 2.2.6's metadata is nowhere: it is assumed to require nothing, and said so.
    assert (
        "numpy"
        in installable_closure(reference, candidate, ["numpy"], md, marker_environment()).unknown
    )
