"""``insights.svg`` and ``pinfs insights --svg FILE``: the insights drawn, as a browser shows them (issue #20)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from browser import screenshot
from helpers import ago, cid_for, make_backend, run_pinfs
from mounting import mounted, needs_fuse, sh
from PIL import Image
from s3server import fs_config, pin_record, put_pins

from pinfs.data.backends import get_backend
from pinfs.data.runstate import record_run
from pinfs.ops.insights_svg import COLOURS, TITLES

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def pictured(root: Path, tmp_path: Path) -> Path:
    """fs-a: 3 stored, 1 pending (2 days old), 1 failed (40 days old), synced 3 h ago; fs-b: the shared
    CID stored, 1 pending (2 h old), its last sync failed; old-json: a pins.json, never synced."""
    shared = cid_for("shared")
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "a"))
    make_backend(root, "fs-b", fs_config("fs-b", tmp_path / "b"))
    put_pins(
        root,
        "fs-a",
        [pin_record(root, "fs-a", shared, "stored")]
        + [pin_record(root, "fs-a", cid_for(f"a{i}"), "stored") for i in range(2)]
        + [
            pin_record(root, "fs-a", cid_for("a-pending"), "pending", created_at=ago(days=2)),
            pin_record(root, "fs-a", cid_for("a-failed"), "failed", created_at=ago(days=40)),
        ],
    )
    put_pins(
        root,
        "fs-b",
        [
            pin_record(root, "fs-b", shared, "stored"),
            pin_record(root, "fs-b", cid_for("b-pending"), "pending", created_at=ago(hours=2)),
        ],
    )
    make_backend(root, "old-json", pins_json=[cid_for("legacy")])
    record_run(get_backend(root, "fs-a"), "sync", {"finished_at": ago(hours=3), "ok": True})
    record_run(get_backend(root, "fs-b"), "sync", {"finished_at": ago(hours=26), "ok": False, "error": "x"})
    return root


def texts(svg: bytes) -> list[str]:
    """Every piece of text in the SVG, as a reader (or a screen reader) finds it."""
    document = ET.fromstring(svg)
    assert document.tag == f"{SVG}svg"
    return [" ".join("".join(element.itertext()).split()) for element in document.iter(f"{SVG}text")]


def pixels_near(image: Image.Image, colour: str, tolerance: int = 12) -> int:
    target = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return sum(
        count
        for count, pixel in image.getcolors(maxcolors=1 << 20)
        if all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], target, strict=True))
    )


def test_the_svg_has_every_chart_and_label(pictured: Path, tmp_path: Path) -> None:
    target = tmp_path / "insights.svg"
    result = run_pinfs(pictured, "insights", "--svg", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"insights drawn in {target}"
    words = texts(target.read_bytes())
    for title in TITLES:
        assert title in words
    assert any(word.startswith("pinfs insights: 8 pins in 3 backends (") for word in words)
    for label in ("fs-a", "fs-b", "old-json", "stored", "pending", "failed", "1d-7d", "30d-365d"):
        assert label in words, label
    assert {"1 backend", "2 backends"} <= set(words)  # replication
    assert " never synced" not in words and "never synced" in words  # old-json
    assert any(word.endswith("hours ago (failed)") for word in words)  # fs-b
    assert any(word.endswith("hours ago") and "failed" not in word for word in words)  # fs-a


def test_chromium_renders_it(pictured: Path, tmp_path: Path) -> None:
    """What a person opening the file sees: not blank, the status colours drawn, the title in ink."""
    target = tmp_path / "insights.svg"
    assert run_pinfs(pictured, "insights", "--svg", str(target)).returncode == 0
    image = Image.open(screenshot(target, tmp_path / "insights.png")).convert("RGB")
    assert image.size == (1200, 850)
    total = image.size[0] * image.size[1]
    white = pixels_near(image, "#ffffff", tolerance=3)
    assert white < total * 0.9, "the page is (almost) blank"
    for status, colour in COLOURS.items():
        assert pixels_near(image, colour) > 500, f"no {status} bars in the picture"
    title_band = image.crop((0, 0, image.size[0], 30))
    assert pixels_near(title_band, "#000000", tolerance=80) > 200, "the title was not drawn"


def test_svg_to_standard_output(pictured: Path) -> None:
    result = run_pinfs(pictured, "insights", "--svg", "-")
    assert result.returncode == 0, result.stderr
    assert TITLES[0] in texts(result.stdout.encode())


def test_svg_into_a_missing_directory_is_one_line(pictured: Path, tmp_path: Path) -> None:
    result = run_pinfs(pictured, "insights", "--svg", str(tmp_path / "nowhere" / "x.svg"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"pinfs insights: error: cannot write {tmp_path / 'nowhere' / 'x.svg'}: No such file or directory"
    ]


def test_an_empty_root_is_drawn_as_such(root: Path) -> None:
    words = texts(run_pinfs(root, "insights", "--svg", "-").stdout.encode())
    assert {"no backends yet", "no pending or failed pins", "no CIDs yet", "no sync recorded yet"} <= set(words)


def test_the_mount_does_not_import_matplotlib_until_asked() -> None:
    """The mount must be ready in well under a second; matplotlib alone takes about half of one."""
    code = "import sys, pinfs.fs.mount, pinfs.cli; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.mount
@needs_fuse
def test_the_mount_serves_insights_svg(pictured: Path, tmp_path: Path) -> None:
    with mounted(pictured, tmp_path / "mnt") as mount:
        assert "insights.svg" in sh(f"ls {mount.mountpoint}").stdout.split()
        data = mount.path("insights.svg").read_bytes()
        assert mount.path("insights.svg").stat().st_size == len(data)
        words = texts(data)
        assert all(title in words for title in TITLES) and "old-json" in words
        assert mount.path("insights.svg").stat().st_mode & 0o777 == 0o444
