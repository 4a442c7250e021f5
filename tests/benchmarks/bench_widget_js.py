"""Widget JS: what a page loads (`TimebackWidget._esm`: js/format.js, js/visibility.js and
js/widget.js joined, whole-line comments left out) is one plain module with no imports (no
runtime dependencies), at most 12 KB and 4 KB gzipped. The commented source files are reported too."""

from __future__ import annotations

import gzip
import re

from timeback_nb import widget as widget_module
from timeback_nb.widget import TimebackWidget

from .results import Bar, Row

NAME = "widget_js"
LIMIT_BYTES = 12 * 1024
LIMIT_GZIPPED = 4 * 1024

# Static `import ... from "x"`, bare `import "x"`, dynamic `import("x")`, `export ... from "x"`.
_IMPORTS = re.compile(r"""^\s*import[\s{*"']|\bimport\s*\(|^\s*export\s[^;]*?\bfrom\s*["']""", re.M)


def run(quick: bool) -> list[Row]:
    esm = TimebackWidget._esm
    assert isinstance(esm, str) and esm.strip(), "TimebackWidget._esm must be the module's source text"
    imports = [m.group(0).strip() for m in _IMPORTS.finditer(esm)]
    assert not imports, f"the widget ESM must not import anything, found: {imports}"
    assert re.search(r"^export default\b", esm, re.M), "the widget ESM must have a default export"
    raw = esm.encode("utf-8")
    folder = next(d for d in widget_module._JS_DIRS if (d / "widget.js").is_file())
    files = {name: len((folder / name).read_bytes()) for name in (*widget_module._HELPERS, "widget.js")}
    source = ", ".join(f"{name} {size:,}" for name, size in files.items())
    return [
        Row(NAME, "bytes of TimebackWidget._esm, what a page loads", [len(raw)], Bar("at_most", LIMIT_BYTES),
            "≤ 12 KB (12,288)", digits=0,
            notes=[f"import statements: 0; commented source files {sum(files.values()):,} bytes ({source})"]),
        Row(NAME, "the same, gzipped", [len(gzip.compress(raw))], Bar("at_most", LIMIT_GZIPPED), "≤ 4 KB (4,096)", digits=0),
    ]
