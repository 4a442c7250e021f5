"""Widget JS: the ESM anywidget loads (`TimebackWidget._esm`) is one plain module, with no
imports (no runtime dependencies) and at most 8 KB."""

from __future__ import annotations

import gzip
import re

from timeback_nb.widget import TimebackWidget

from .results import Bar, Row

NAME = "widget_js"
LIMIT_BYTES = 8 * 1024

# Static `import ... from "x"`, bare `import "x"`, dynamic `import("x")`, `export ... from "x"`.
_IMPORTS = re.compile(r"""^\s*import[\s{*"']|\bimport\s*\(|^\s*export\s[^;]*?\bfrom\s*["']""", re.M)


def run(quick: bool) -> list[Row]:
    esm = TimebackWidget._esm
    assert isinstance(esm, str) and esm.strip(), "TimebackWidget._esm must be the module's source text"
    imports = [m.group(0).strip() for m in _IMPORTS.finditer(esm)]
    assert not imports, f"the widget ESM must not import anything, found: {imports}"
    assert re.search(r"^export default\b", esm, re.M), "the widget ESM must have a default export"
    raw = len(esm.encode("utf-8"))
    return [
        Row(NAME, "bytes of TimebackWidget._esm (no imports)", [raw], Bar("at_most", LIMIT_BYTES), "≤ 8 KB (8,192)",
            digits=0, notes=[f"{len(gzip.compress(esm.encode('utf-8')))} bytes gzipped; import statements: 0"]),
    ]
