"""Every Python snippet in the README runs as written, in a real kernel, as a reader would run it.

The README's fenced blocks tagged ``python`` are the cells of one notebook, in README order, run
in one real IPython kernel (nbclient) with the README's own ``timeback.config.json`` block as
the config, in local mode with a temp store. A block that shows signatures rather than code
says so in its fence (```` ```python no-run ````): GitHub still highlights it, and this test
skips only those.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from timeback_nb.store import Store

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NO_RUN = "no-run"

# ```info\n body ``` (a fence of three or more backticks, closed by the same fence).
_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)


def fenced_blocks(text: str) -> list[tuple[list[str], str]]:
    """(info-string words, body) of every fenced code block, in order."""
    return [(match["info"].split(), match["body"]) for match in _FENCE.finditer(text)]


def runnable_python(text: str) -> list[str]:
    return [body for info, body in fenced_blocks(text) if info[:1] == ["python"] and NO_RUN not in info[1:]]


def readme_config(text: str) -> dict:
    (config,) = [json.loads(body) for info, body in fenced_blocks(text) if info[:1] == ["json"] and '"courses"' in body]
    return config


def test_the_fence_parser_reads_info_strings_and_bodies() -> None:
    text = "x\n```python no-run\na(1)\n```\n````python\n```\nb\n````\n```json\n{}\n```\n"
    assert fenced_blocks(text) == [(["python", NO_RUN], "a(1)\n"), (["python"], "```\nb\n"), (["json"], "{}\n")]
    assert runnable_python(text) == ["```\nb\n"]


def test_every_python_block_is_run_or_marked_no_run() -> None:
    """No silent third kind: each python-ish fence is `python` (runs) or `python no-run`."""
    text = README.read_text("utf-8")
    for info, body in fenced_blocks(text):
        if info and info[0] in {"py", "ipython", "python3", "pycon"}:
            pytest.fail(f"README block tagged {info[0]!r} (use python, or python {NO_RUN}):\n{body}")
    assert len(runnable_python(text)) >= 3  # the notebook's two lines, its end, the magic


def test_the_readmes_python_snippets_run_as_written_in_a_real_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text("utf-8")
    work = tmp_path / "course"
    work.mkdir()
    (work / "timeback.config.json").write_text(json.dumps(readme_config(text)), "utf-8")
    store = tmp_path / "store.sqlite"
    for variable in ("TIMEBACK_ENV", "TIMEBACK_CLIENT_ID", "TIMEBACK_CLIENT_SECRET", "TIMEBACK_CONFIG",
                     "TIMEBACK_CALIPER_URL", "TIMEBACK_RELAY_URL", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TIMEBACK_NB_TRANSPORT", "local")
    monkeypatch.setenv("TIMEBACK_NB_STORE", str(store))
    monkeypatch.setenv("TIMEBACK_USER_EMAIL", "reader@example.edu")
    monkeypatch.setenv("TIMEBACK_USER_ID", "u-readme")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in runnable_python(text)]
    client = NotebookClient(notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an exception

    for cell in notebook.cells:
        # A refused magic prints one `timeback: ...` line on stderr instead of raising.
        complaints = [o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
        assert not complaints, f"README block printed to stderr:\n{cell.source}\n---\n{''.join(complaints)}"

    # The snippets did what they say: each end with results was committed (the outbox holds every
    # event, delivered to the local store or still queued when the kernel stopped).
    with Store(store) as opened:
        bodies = [json.loads(row["body"]) for row in opened.events()]
    completions = [e for body in bodies for e in body["data"] if e["type"] == "ActivityEvent"]
    assert {c["object"]["activity"]["name"] for c in completions} == {"Week 3: Linear functions"}
    assert len(completions) == sum(".end({" in block or "%timeback end --" in block for block in runnable_python(text))


def test_the_install_lines_name_the_wheel_this_version_builds() -> None:
    """`pip install dist/timeback_nb-<version>-py3-none-any.whl` (tests/test_wheel.py builds and
    installs that wheel) must not go stale when the version moves."""
    import timeback_nb

    (install,) = [body for info, body in fenced_blocks(README.read_text("utf-8")) if "pip install" in body]
    assert "pip install ./timeback_nb" in install
    wheels = re.findall(r"dist/(\S+\.whl)", install)
    assert wheels == [f"timeback_nb-{timeback_nb.__version__}-py3-none-any.whl"]
