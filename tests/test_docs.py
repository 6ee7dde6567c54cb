"""The documentation builds, and its checker catches what it claims to catch.

``docs/build.py`` (``make docs``) renders ``docs/*.md``, generates the CLI, spec and API
tables from the code and fails on broken links/anchors, unknown options or Makefile targets,
names missing from the source and public names without docstrings. Each check has a
negative control here: a page with that defect must make the build fail and be named.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import types
from collections import namedtuple
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))


@pytest.fixture(scope="module")
def build():
    from conftest import require

    require(importlib.util.find_spec("markdown") is not None, "markdown not installed (test group)")
    spec = importlib.util.spec_from_file_location("cdt_docs_build", DOCS / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(build, tmp_path_factory):
    out = tmp_path_factory.mktemp("docs_out")
    problems = build.build(DOCS, out, ROOT, quiet=True)
    return out, problems


def _src_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in PAGES:
        shutil.copy(DOCS / name, src / name)
    return src


def _messages(problems) -> str:
    return "\n".join(str(p) for p in problems)


def test_docs_build_without_problems(built):
    out, problems = built
    assert problems == [], _messages(problems)
    for name in PAGES:
        page = out / f"{name[:-3]}.html"
        assert page.is_file(), name
        assert page.read_text().startswith("<!DOCTYPE html>")


def test_expected_pages_exist():
    for name in (
        "index.md",
        "user-guide.md",
        "model.md",
        "reading-uncertainty.md",
        "bring-your-own-mesh.md",
        "api.md",
    ):
        assert name in PAGES


def test_generated_tables_follow_the_code(built, build):
    import cdt_bayes
    from cdt_bayes._cli import build_parser

    out, _ = built
    guide = (out / "user-guide.html").read_text()
    for command, options in build.cli_options(build_parser()).items():
        for opt in options - {"-h", "--help"}:
            assert f"<code>{opt}</code>" in guide, (command, opt)
    assert "<!-- generated" not in (out / "user-guide.md").read_text()
    api = (out / "api.html").read_text()
    for name in cdt_bayes.__all__:
        assert f'id="{name}"' in api, name
    model = (out / "model.html").read_text()
    spec = cdt_bayes.load_spec("default")
    assert f"<code>{spec.layer_depth_mm:g}</code>" in model
    assert f"<code>{spec.site_spacing_mm:g}</code>" in model
    for name in cdt_bayes.list_specs():
        assert f"<code>{name}</code>" in model, name


def test_script_exit_status(build, tmp_path):
    """``python docs/build.py`` (what ``make docs`` runs): 0 on the repo's pages, 1 on a bad one."""
    ok = subprocess.run(
        [sys.executable, str(DOCS / "build.py"), "--out", str(tmp_path / "ok"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    src = _src_copy(tmp_path)
    (src / "index.md").write_text((src / "index.md").read_text() + "\n[gone](gone.md)\n")
    bad = subprocess.run(
        [sys.executable, str(DOCS / "build.py"), "--src", str(src), "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    assert "docs: error: index.md" in bad.stderr and "gone.md" in bad.stderr


def test_positive_control_copy_builds(build, tmp_path):
    """The copied pages build cleanly, so the failures below come from the injected page."""
    src = _src_copy(tmp_path)
    assert build.build(src, tmp_path / "out", ROOT, quiet=True) == []


BROKEN = """# Broken

[a page that is not there](nowhere.md)

[an anchor that is not there](model.md#no-such-heading)

[a repository file that is not there](../cdt_bayes/_no_such_module.py)

[a local anchor that is not there](#nope)
"""


def test_broken_links_fail_the_build(build, tmp_path):
    src = _src_copy(tmp_path)
    (src / "broken.md").write_text(BROKEN)
    index = src / "index.md"
    index.write_text(index.read_text() + "\n[broken](broken.md)\n")
    problems = build.build(src, tmp_path / "out", ROOT, quiet=True)
    text = _messages(problems)
    assert len(problems) == 4, text
    assert all(p.page == "broken.md" for p in problems), text
    assert "nowhere.md" in text
    assert "no-such-heading" in text
    assert "_no_such_module.py" in text
    assert "'nope'" in text


def test_orphan_page_fails(build, tmp_path):
    src = _src_copy(tmp_path)
    (src / "lonely.md").write_text("# Lonely\n\nNobody links here; [home](index.md).\n")
    problems = build.build(src, tmp_path / "out", ROOT, quiet=True)
    assert [(p.page, p.message) for p in problems] == [
        ("lonely.md", "not linked from any other page")
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("```sh\ncdt-bayes fit --mesh m.vtu --no-such-option 3\n```\n", "--no-such-option"),
        ("```sh\ncdt-bayes fit --mesh m.vtu \\\n    --bogus-opt 1\n```\n", "--bogus-opt"),
        ("Run `cdt-bayes simulate --chains 4`.\n", "--chains"),  # an option of fit, not simulate
        ("```sh\ncdt-bayes frobnicate --out x\n```\n", "frobnicate"),
        ("Use `--not-an-option`.\n", "--not-an-option"),
        ("Run `make no-such-target`.\n", "no-such-target"),
        ("<!-- generated: nonsense -->\n", "nonsense"),
        ("<!-- generate: api -->\n", "malformed marker"),
        (
            "<!-- check: names-in-source -->\n\n| name | x |\n|---|---|\n"
            "| `surely_not_in_source_xyz` | y |\n",
            "surely_not_in_source_xyz",
        ),
    ],
)
def test_accuracy_checks_fail_the_build(build, tmp_path, snippet, expected):
    src = _src_copy(tmp_path)
    index = src / "index.md"
    index.write_text(index.read_text() + "\n" + snippet)
    problems = build.build(src, tmp_path / "out", ROOT, quiet=True)
    assert len(problems) == 1 and expected in str(problems[0]), _messages(problems)
    assert problems[0].page == "index.md"


def test_missing_docstrings_are_reported(build):
    def documented(x):
        """Do something."""

    def undocumented(x):
        pass

    class Documented:
        """A class."""

        def method(self):
            """A method."""

        def bare_method(self):
            pass

    Bare = namedtuple("Bare", "a b")  # its __doc__ is made up: 'Bare(a, b)'

    pkg = types.ModuleType("fakepkg")
    pkg.__all__ = ["documented", "undocumented", "Documented", "Bare", "missing"]
    pkg.documented, pkg.undocumented, pkg.Documented, pkg.Bare = (
        documented,
        undocumented,
        Documented,
        Bare,
    )
    problems = build.docstring_problems(pkg)
    assert sorted(problems) == sorted(
        [
            "undocumented: no docstring",
            "Documented.bare_method: no docstring",
            "Bare: no docstring",
            "missing: listed in __all__ but not defined",
        ]
    )


def test_numpydoc_rendering(build):
    doc = (
        "Summary with ``code`` and :func:`~cdt_bayes.fit`.\n\n"
        "Parameters\n----------\nx_mm : (n, 3) float\n    Positions, mm.\n\n"
        "Returns\n-------\n(n,) float\n    Times, ms.\n"
    )
    md = build.docstring_markdown(doc, {"fit"})
    assert "`code`" in md and "[`fit`](#fit)" in md
    assert "**Parameters**" in md and "**`x_mm`** : (n, 3) float" in md
    assert "**Returns**" in md and "Times, ms." in md


def test_toml_comments(build):
    text = '[a]\nx = 1   # one\n# above y\ny = "s # not a comment"\n'
    assert build.toml_comments(text) == {("a", "x"): "one", ("a", "y"): "above y"}
