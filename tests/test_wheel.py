"""The built wheel carries the widget JS and the demo files, and the installed package uses its own copies."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from timeback_nb.widget import TimebackWidget

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, timeback_nb, timeback_nb.cli as cli, timeback_nb.widget as w
print(json.dumps({"file": timeback_nb.__file__, "esm": w.TimebackWidget._esm, "demo": str(cli.demo_source())}))
"""
DEMO = {"demo.ipynb", "lesson-linear-functions.ipynb", "timeback.config.json"}


def test_wheel_ships_the_js_and_the_demo_and_the_installed_package_uses_its_own_copies(tmp_path: Path) -> None:
    dist, target = tmp_path / "dist", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # No build isolation and no index: tests do not reach the network (hatchling is installed).
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=240,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("timeback_nb-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in ("widget.js", "format.js", "visibility.js"):
            assert f"timeback_nb/static/{name}" in names
            assert archive.read(f"timeback_nb/static/{name}") == (ROOT / "js" / name).read_bytes()
        for name in DEMO:  # `timeback-nb demo` works from a wheel install, without a checkout
            assert archive.read(f"timeback_nb/demo/{name}") == (ROOT / "notebooks" / name).read_bytes()
    assert not any(n.startswith("js/") for n in names)

    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=240,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert Path(seen["file"]).is_relative_to(target), seen["file"]  # the wheel's copy, not the checkout
    assert seen["esm"] == TimebackWidget._esm
    assert Path(seen["demo"]) == Path(seen["file"]).parent / "demo", "the demo comes from the wheel"
    assert "./format.js" not in seen["esm"] and "export function formatElapsed" in seen["esm"]
