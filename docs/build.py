"""Build the cdt_bayes documentation: ``docs/*.md`` → HTML in ``docs/_build/`` (``make docs``).

What it does, offline (no network at any step):

1. Reads every ``*.md`` page of the source folder (default: this folder).
2. Expands the ``<!-- generated: KIND ARGS -->`` placeholders from the code itself, so the
   tables cannot drift from it:

   - ``cli-commands``: one row per ``cdt-bayes`` subcommand (its help line);
   - ``cli COMMAND``: usage, description and option table of one subcommand, read from the
     argparse parser (:func:`cdt_bayes._cli.build_parser`);
   - ``spec NAME``: every key of ``models/NAME.toml`` with its value and its inline comment;
   - ``spec-variants``: the shipped specs and what each changes relative to ``default``;
   - ``priors``: the prior of every sample site, with the numbers of ``models/default.toml``;
   - ``api``: the API reference of everything in ``cdt_bayes.__all__`` (signatures and
     numpydoc docstrings rendered as Markdown).

3. Renders Markdown to HTML with Python-Markdown (the ``markdown`` package, pure Python, no
   dependencies, in the ``docs`` and ``test`` dependency groups). It was chosen over a
   hand-written converter because the pages use tables, fenced code and heading anchors,
   whose corner cases a minimal converter gets wrong; over pdoc/mkdocs/sphinx because it is
   one small wheel that works offline and leaves the page structure to us.
4. Checks, and exits non-zero listing every problem:

   - every relative link resolves: to a page (``model.md``), an anchor in a page
     (``model.md#softmin``, ``#softmin``) or a file of the repository (``../Makefile``);
   - every page but ``index.md`` is linked from another page;
   - every ``--option`` written in a ``cdt-bayes COMMAND`` line of a code block exists for
     that command, and every inline ```--option``` exists for some command;
   - every ``make TARGET`` exists in the Makefile;
   - the first column of a table that follows ``<!-- check: names-in-source -->`` names
     strings that occur in the package's source (output files, arrays, columns, keys);
   - every public name in ``cdt_bayes.__all__`` (and every public method of a public class)
     has a docstring; constants are documented by a ``#:`` comment above their assignment.

Usage::

    python docs/build.py [--src DIR] [--out DIR] [--quiet]

Exit status 0: all pages written, no problem; 1: problems (listed on stderr, one per line,
``docs: error: PAGE[:LINE]: PROBLEM``); pages are still written so they can be inspected.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import html
import importlib
import importlib.resources
import inspect
import math
import os
import posixpath
import re
import sys
import textwrap
import tomllib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

#: Page order of the navigation bar (other pages follow alphabetically).
NAV = [
    "index.md",
    "user-guide.md",
    "model.md",
    "reading-uncertainty.md",
    "bring-your-own-mesh.md",
    "api.md",
    "design.md",
]

#: Fallback documentation of constants whose definition has no ``#:`` comment.
CONSTANT_DOCS = {
    "INTERIOR": "Surface label 0: interior node (point data ``surface``).",
    "LV_ENDO": "Surface label 1: LV endocardium.",
    "RV_ENDO": "Surface label 2: RV endocardium.",
    "EPI": "Surface label 3: epicardium.",
    "BASE": "Surface label 4: base (the cut plane of the ventricles).",
}

#: Meaning of spec keys whose TOML line has no comment (the file's comment wins).
SPEC_KEY_DOCS = {
    "name": "spec name (`--spec NAME`)",
    "description": "one line shown in listings",
    "n_pmj": "number of PMJs K (`--n-pmj` overrides)",
    "student_nu": "degrees of freedom of the Student-t likelihood",
    "extends": "spec this file starts from; its keys override the parent's",
}

#: Option spellings that may appear inline without belonging to ``cdt-bayes``.
FOREIGN_OPTIONS = {"--group", "--headless", "--no-sandbox", "--print-to-pdf"}

#: Module order of the API reference (pipeline order) and section titles.
API_SECTIONS = [
    ("cdt_bayes._geometry", "Geometry"),
    ("cdt_bayes._io", "Files (input, output, validation)"),
    ("cdt_bayes._qrs", "The QRS window of an input ECG"),
    ("cdt_bayes._meshgen", "Built-in geometry"),
    ("cdt_bayes._coarsen", "Inference mesh (coarser than the display mesh)"),
    ("cdt_bayes._fibres", "Fibres"),
    ("cdt_bayes._eikonal", "Eikonal activation"),
    ("cdt_bayes._ecg", "ECG"),
    ("cdt_bayes._model", "Bayesian model"),
    ("cdt_bayes._inference", "Inference"),
    ("cdt_bayes._outputs", "Fit outputs"),
    ("cdt_bayes._summaries", "Summaries"),
    ("cdt_bayes._report", "Report"),
    ("cdt_bayes._errors", "Errors"),
]

_SECTION_NAMES = {
    "Parameters",
    "Other Parameters",
    "Returns",
    "Yields",
    "Receives",
    "Raises",
    "Warns",
    "Attributes",
    "Methods",
    "See Also",
    "Notes",
    "References",
    "Examples",
    "Warnings",
}
_ITEM_SECTIONS = {
    "Parameters",
    "Other Parameters",
    "Returns",
    "Yields",
    "Receives",
    "Raises",
    "Warns",
    "Attributes",
    "Methods",
}

# Placeholders and markers count only alone on their line (not quoted inside code spans).
_PLACEHOLDER = re.compile(r"^[ \t]*<!--\s*generated:\s*([a-z-]+)\s*([^>\n]*?)\s*-->[ \t]*$", re.M)
_CHECK_NAMES = re.compile(r"^\s*<!--\s*check:\s*names-in-source\s*-->\s*$")


@dataclasses.dataclass
class Problem:
    """One problem found by the build: where and what."""

    page: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.page if self.line is None else f"{self.page}:{self.line}"
        return f"{where}: {self.message}"


# --------------------------------------------------------------------------------------
# Imports of the package (the docs describe this checkout)
# --------------------------------------------------------------------------------------


def _import_package():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return importlib.import_module("cdt_bayes")


# --------------------------------------------------------------------------------------
# Markdown helpers
# --------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Make ``text`` safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _code(text: str) -> str:
    text = str(text)
    tick = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{tick}{pad}{text}{pad}{tick}"


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


# --------------------------------------------------------------------------------------
# CLI tables (from the argparse parser)
# --------------------------------------------------------------------------------------


def _subparsers(parser) -> dict:
    for action in parser._actions:  # argparse keeps no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_help(parser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def cli_options(parser) -> dict[str, set[str]]:
    """Option strings of every subcommand, e.g. ``{"fit": {"--mesh", ...}}``."""
    out = {}
    for name, sub in _subparsers(parser).items():
        out[name] = {s for a in sub._actions for s in a.option_strings}
    return out


def _argument_cell(action) -> str:
    if action.nargs == 0:
        return "(flag)"
    if action.choices is not None:
        arg = "{" + ",".join(map(str, action.choices)) + "}"
    elif isinstance(action.metavar, tuple):
        arg = " ".join(action.metavar)
    else:
        arg = action.metavar or action.dest.upper()
    if action.nargs == "+":
        arg = f"{arg} [{arg} ...]"
    out = _code(arg)
    kind = getattr(action.type, "__name__", None)
    if action.choices is None and kind and not kind.startswith("_") and kind not in ("str",):
        out += f" ({kind})"
    return out


def _default_cell(action) -> str:
    if action.required or (not action.option_strings and action.nargs is None):
        return "required"
    if action.nargs == 0:
        return "off"
    if action.default is None:
        return "—"
    if isinstance(action.default, (list, tuple)):
        return _code(" ".join(map(str, action.default)))
    return _code(_fmt_value(action.default).strip('"'))


def _help_text(action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": prog, "dest": action.dest}
    return text


def _wrap_usage(usage: str, indent: int, width: int = 88) -> str:
    """Wrap a usage line between bracketed groups, never inside ``[--qrs START END]``."""
    groups, depth, cur = [], 0, ""
    for ch in usage:
        if ch == " " and depth == 0:
            if cur:
                groups.append(cur)
            cur = ""
            continue
        depth += ch in "[{("
        depth -= ch in "]})"
        cur += ch
    if cur:
        groups.append(cur)
    lines, line = [], ""
    for g in groups:
        if line and len(line) + 1 + len(g) > width:
            lines.append(line)
            line = " " * indent + g
        else:
            line = f"{line} {g}" if line else g
    lines.append(line)
    return "\n".join(lines)


def render_cli_command(parser, command: str) -> str:
    """Usage, description and option table of one ``cdt-bayes`` subcommand (Markdown)."""
    subs = _subparsers(parser)
    if command not in subs:
        raise KeyError(f"unknown cdt-bayes command {command!r} (known: {', '.join(subs)})")
    sub = subs[command]
    usage = " ".join(sub.format_usage().split())
    usage = usage[len("usage: ") :] if usage.startswith("usage: ") else usage
    usage = _wrap_usage(usage, len(sub.prog) + 1)
    rows = []
    for a in sub._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        name = ", ".join(_code(s) for s in a.option_strings) or _code(a.metavar or a.dest.upper())
        rows.append([name, _argument_cell(a), _default_cell(a), _help_text(a, sub.prog)])
    parts = ["```text", usage, "```", ""]
    if sub.description:
        parts += [" ".join(sub.description.split()), ""]
    parts.append(_table(["option", "argument", "default", "meaning"], rows))
    return "\n".join(parts)


def render_cli_commands(parser) -> str:
    """One row per subcommand: name and help line (Markdown table)."""
    helps = _command_help(parser)
    rows = [[_code(f"cdt-bayes {name}"), helps.get(name, "")] for name in _subparsers(parser)]
    return _table(["command", "what it does"], rows)


# --------------------------------------------------------------------------------------
# Model specs (models/*.toml)
# --------------------------------------------------------------------------------------


def _spec_file(name: str) -> tuple[str, str]:
    """Text and repo-relative path of a shipped spec."""
    res = importlib.resources.files("cdt_bayes.models").joinpath(f"{name}.toml")
    if not res.is_file():
        raise KeyError(f"no shipped spec {name!r} (models/{name}.toml)")
    return res.read_text(), f"models/{name}.toml"


def toml_comments(text: str) -> dict[tuple[str, str], str]:
    """Inline comments of ``key = value  # comment`` lines, keyed by (section, key).

    Comments on their own lines just above a key are used when the key has none inline.
    """
    out: dict[tuple[str, str], str] = {}
    section, pending = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            pending = []
            continue
        if line.startswith("#"):
            pending.append(line.lstrip("#").strip())
            continue
        m = re.match(r"\[([^\]]+)\]", line)
        if m:
            section, pending = m.group(1).strip(), []
            continue
        m = re.match(r"([A-Za-z0-9_]+)\s*=\s*(.*)$", line)
        if m:
            key, rest = m.group(1), m.group(2)
            comment = ""
            # the comment starts at a '#' outside a string
            in_str = None
            for i, ch in enumerate(rest):
                if ch in "\"'" and in_str in (None, ch):
                    in_str = None if in_str else ch
                elif ch == "#" and in_str is None:
                    comment = rest[i + 1 :].strip()
                    break
            out[(section, key)] = comment or " ".join(pending)
        pending = []
    return out


def render_spec(name: str) -> str:
    """Table of every key of ``models/NAME.toml``: section, key, value, meaning."""
    text, path = _spec_file(name)
    raw = tomllib.loads(text)
    comments = toml_comments(text)
    rows = []
    for section, vals in raw.items():
        if not isinstance(vals, dict):
            doc = comments.get(("", section)) or SPEC_KEY_DOCS.get(section, "")
            rows.append(["", _code(section), _code(_fmt_value(vals)), doc])
            continue
        for key, val in vals.items():
            doc = comments.get((section, key)) or SPEC_KEY_DOCS.get(key, "")
            rows.append([f"`[{section}]`", _code(key), _code(_fmt_value(val)), doc])
    head = f"Generated from [`{path}`](../{path}):\n\n"
    return head + _table(["section", "key", "value", "meaning"], rows)


def render_spec_variants(cdt) -> str:
    """Tabulate the shipped specs and the keys each changes relative to ``default``."""
    base = cdt.load_spec("default").to_dict()
    rows = []
    for name in cdt.list_specs():
        spec = cdt.load_spec(name).to_dict()
        diff = [
            f"{k} = {_fmt_value(v)}"
            for k, v in spec.items()
            if k not in ("name", "description", "source") and v != base.get(k)
        ]
        link = f"[`{name}`](../models/{name}.toml)"
        rows.append(
            [link, spec["description"], ", ".join(_code(d) for d in diff) or "(the reference)"]
        )
    return _table(["spec (`--spec NAME`)", "description", "differs from default in"], rows)


def _lognormal_90(log_sd: float) -> tuple[float, float]:
    z = 1.6448536269514722
    return math.exp(-z * log_sd), math.exp(z * log_sd)


def render_priors(cdt) -> str:
    """Prior of every sample site of :func:`cdt_bayes.cdt_model`, numbers from ``default``.

    The templates mirror ``cdt_model`` in ``cdt_bayes/_model.py``; a renamed spec key makes
    the build fail (KeyError), which is the point.
    """
    s = cdt.load_spec("default").to_dict()
    lo, hi = _lognormal_90(s["scale_log_sd"])
    glo, ghi = _lognormal_90(s["gain_log_sd"])
    rows = [
        [
            "`pmj_xyz_mm` (n_pmj, 3), mm",
            "`LayerPrior`: equal-weight mixture of isotropic Gaussians, sd "
            f"`prior_kernel_mm` = {s['prior_kernel_mm']:g} mm, one centred on every admissible "
            f"node (within `layer_depth_mm` = {s['layer_depth_mm']:g} mm of the LV/RV "
            "endocardium); "
            "with `split_ventricles` each PMJ's mixture covers its own ventricle's layer only",
            "a smooth stand-in for 'uniform over the subendocardial layer'",
        ],
        [
            "`pmj_t_ms` (n_pmj,), ms",
            f"Uniform(0, `t_max_ms` = {s['t_max_ms']:g})",
            "initiation time of each PMJ from the fitted window's start; `t_max_ms` is raised "
            "by the detected QRS onset when the window has a lead-in of more than 5 ms",
        ],
        [
            "`cv_scale` (only when `infer_scale`)",
            f"LogNormal(0, `scale_log_sd` = {s['scale_log_sd']:g})",
            f"one factor on both velocities; 90% prior interval {lo:.2f}–{hi:.2f}, i.e. "
            f"{s['cv_fiber'] * lo:.2f}–{s['cv_fiber'] * hi:.2f} mm/ms along and "
            f"{s['cv_cross'] * lo:.2f}–{s['cv_cross'] * hi:.2f} mm/ms across the fibre",
        ],
        [
            "`gain` (dimensionless)",
            f"LogNormal(log g₀, `gain_log_sd` = {s['gain_log_sd']:g})",
            "g₀ = RMS(observed ECG) / median RMS of 64 prior ECGs at gain 1 (empirical Bayes); "
            f"90% prior interval {glo:.2f}–{ghi:.2f} × g₀",
        ],
        [
            "`shift_ms`, ms",
            f"Normal(0, `shift_sd_ms` = {s['shift_sd_ms']:g})",
            "time offset between the model and the recorded QRS onset",
        ],
        [
            "`sigma_mV`, mV",
            f"HalfNormal(`noise_rel_scale` = {s['noise_rel_scale']:g} × RMS(observed ECG))",
            "noise sd per sample, shared by all leads",
        ],
        [
            '`noise_rho` (only when `likelihood = "ar1"`)',
            f"Uniform(0, `ar1_rho_max` = {s['ar1_rho_max']:g})",
            "lag-one correlation of the noise between neighbouring samples",
        ],
        [
            "`ecg` (observed; n_leads, n_times), mV",
            "Normal(gain · ECG(T + shift), sigma) independently per lead and sample "
            f'(`likelihood = "student_t"`: Student-t with `student_nu` = {s["student_nu"]:g}; '
            '`"ar1"`: Gaussian AR(1) in time per lead, marginal sd sigma, correlation noise_rho^lag)',
            f"compared every `dt_ms` = {s['dt_ms']:g} ms",
        ],
        [
            f"per-lead baseline (`baseline` = \"{s['baseline']}\"; integrated out, not a sample site), mV",
            f"Normal(0, `baseline_rel_sd` = {s['baseline_rel_sd']:g} × RMS(observed ECG)) on each "
            "coefficient of a level (`offset`) or a level and a ramp (`linear`)",
            "the ECG's own zero: clinical windows start on the PR segment and end on the ST "
            "segment; `auto` fits level and ramp only when the window starts or ends off zero",
        ],
    ]
    head = (
        f"Generated from `models/default.toml` (`n_pmj` = {s['n_pmj']}, "
        f"`softmin_tau_ms` = {s['softmin_tau_ms']:g} ms):\n\n"
    )
    return head + _table(["sample site", "prior", "meaning"], rows)


# --------------------------------------------------------------------------------------
# API reference (cdt_bayes.__all__)
# --------------------------------------------------------------------------------------


def _auto_doc(obj, name: str) -> bool:
    """Tell whether ``obj.__doc__`` was made up by namedtuple/dataclass, not written."""
    doc = obj.__doc__ or ""
    return doc.startswith(f"{name}(") and "\n" not in doc.strip()


def _own_doc(obj, name: str) -> str | None:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        if not doc or _auto_doc(obj, name):
            return None
        return inspect.cleandoc(doc)
    doc = getattr(obj, "__doc__", None)
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj) or callable(obj):
        return inspect.cleandoc(doc) if doc else None
    return None


def _is_data(obj) -> bool:
    return not (
        inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj) or callable(obj)
    )


def constant_doc(module, name: str) -> str | None:
    """Return the ``#:`` comment block just above the assignment of ``name`` in ``module``."""
    try:
        src = inspect.getsource(module)
    except (OSError, TypeError):
        return None
    lines = src.splitlines()
    for node in ast.parse(src).body:
        targets = []
        if isinstance(node, ast.Assign):
            for t in node.targets:
                targets += [t] if isinstance(t, ast.Name) else list(getattr(t, "elts", []))
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            i, doc = node.lineno - 2, []
            while i >= 0 and lines[i].strip().startswith("#:"):
                doc.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            return " ".join(doc) or None
    return None


def _public_members(cls) -> list[tuple[str, object]]:
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property) or inspect.isfunction(member):
            out.append((name, member))
    return out


def docstring_problems(package) -> list[str]:
    """Names in ``package.__all__`` (and public methods of its classes) without docstrings."""
    problems = []
    for name in getattr(package, "__all__", []):
        if not hasattr(package, name):
            problems.append(f"{name}: listed in __all__ but not defined")
            continue
        obj = getattr(package, name)
        if _is_data(obj):
            mod = None
            for cand in list(sys.modules.values()):
                if (
                    getattr(cand, "__name__", "").startswith(package.__name__)
                    and getattr(cand, name, None) is obj
                ):
                    mod = cand
                    if constant_doc(cand, name):
                        break
            if not (mod is not None and constant_doc(mod, name)) and name not in CONSTANT_DOCS:
                problems.append(f"{name}: constant without a '#:' comment above its assignment")
            continue
        if not _own_doc(obj, name):
            problems.append(f"{name}: no docstring")
        if inspect.isclass(obj):
            for mname, member in _public_members(obj):
                doc = member.__doc__ if not isinstance(member, property) else member.fget.__doc__
                if not doc or not doc.strip():
                    problems.append(f"{name}.{mname}: no docstring")
    return problems


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|obj|exc|const):`~?([^`]+)`")


def _inline(text: str, names: set[str]) -> str:
    """RST inline markup → Markdown: roles become (linked) code, ``x`` becomes `x`."""

    def role(m):
        target = m.group(1)
        if "<" in target and target.endswith(">"):
            target = target[target.index("<") + 1 : -1]
        short = target.split(".")[-1] if target.startswith("cdt_bayes") else target
        if short in names:
            return f"[`{short}`](#{short})"
        head = short.split(".")[0]
        if head in names:
            return f"[`{short}`](#{head})"
        return f"`{short}`"

    text = _ROLE.sub(role, text)
    text = re.sub(r"``(.+?)``", lambda m: _code(m.group(1)), text)
    # escape '<' and '*' outside code spans (raw HTML / emphasis would swallow them)
    parts = re.split(r"(`+[^`]*?`+)", text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace("*", "\\*")
    return "".join(parts)


def _split_sections(doc: str) -> list[tuple[str, list[str]]]:
    lines = doc.splitlines()
    out: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() in _SECTION_NAMES and re.fullmatch(r"\s*-{3,}\s*", nxt):
            out.append((line.strip(), []))
            i += 2
            continue
        out[-1][1].append(line)
        i += 1
    return out


def _free_text(lines: list[str], names: set[str]) -> str:
    text = textwrap.dedent("\n".join(lines)).strip("\n")
    blocks, buf, in_code = [], [], False
    # indented blocks (equations) become fenced code; the rest is inline-converted
    for line in text.splitlines():
        code_line = line.startswith("    ") or (in_code and not line.strip())
        if code_line != in_code and buf:
            blocks.append((in_code, buf))
            buf = []
        in_code = code_line
        buf.append(line)
    if buf:
        blocks.append((in_code, buf))
    out = []
    for is_code, blk in blocks:
        if is_code:
            body = textwrap.dedent("\n".join(blk)).strip("\n")
            out.append(f"```text\n{body}\n```")
        else:
            out.append("\n".join(_inline(x, names) for x in blk))
    return "\n\n".join(s for s in out if s.strip())


def _items(lines: list[str], names: set[str], section: str) -> str:
    text = textwrap.dedent("\n".join(lines)).strip("\n")
    items: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            items.append((line, []))
        elif items:
            items[-1][1].append(line)
    out = []
    for head, desc in items:
        if " : " in head or head.endswith(" :"):
            name, _, typ = head.partition(" :")
            label = f"**{_code(name.strip())}** : {_inline(typ.strip(), names)}"
        elif section in ("Returns", "Yields", "Raises", "Warns"):
            label = (
                f"*{_inline(head.strip(), names)}*"
                if section != "Raises"
                else _inline(head.strip(), names)
            )
            if section in ("Raises", "Warns"):
                word = head.strip()
                label = f"[`{word}`](#{word})" if word in names else _code(word)
        else:
            label = f"**{_code(head.strip())}**"
        body = textwrap.dedent("\n".join(desc)).strip("\n")
        entry = f"- {label}"
        if body:
            body_md = _free_text(body.splitlines(), names)
            entry += "\n\n" + textwrap.indent(body_md, "    ")
        out.append(entry)
    return "\n\n".join(out)


def docstring_markdown(doc: str, names: set[str]) -> str:
    """Render a numpydoc docstring as Markdown (sections as bold headings, items as lists)."""
    parts = []
    for title, lines in _split_sections(doc):
        if not any(x.strip() for x in lines):
            continue
        if title == "":
            parts.append(_free_text(lines, names))
        elif title == "Examples":
            body = textwrap.dedent("\n".join(lines)).strip("\n")
            parts.append(f"**{title}**\n\n```python\n{body}\n```")
        elif title in _ITEM_SECTIONS:
            parts.append(f"**{title}**\n\n{_items(lines, names, title)}")
        else:
            parts.append(f"**{title}**\n\n{_free_text(lines, names)}")
    return "\n\n".join(parts)


class _Raw:
    """An annotation shown as written (``from __future__ import annotations`` stores strings)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _unquote(p: inspect.Parameter) -> inspect.Parameter:
    if isinstance(p.annotation, str):
        return p.replace(annotation=_Raw(p.annotation))
    return p


def _signature(obj, name: str, kind: str) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{kind} {name}"
    params = [str(_unquote(p)) for p in sig.parameters.values()]
    if kind in ("def", "method") and params and params[0] in ("self", "cls"):
        params = params[1:]
    ret = ""
    if sig.return_annotation is not inspect.Signature.empty:
        ann = sig.return_annotation
        ret = f" -> {ann if isinstance(ann, str) else inspect.formatannotation(ann)}"
    kw = "class" if kind == "class" else "def"
    one = f"{kw} {name}({', '.join(params)}){ret}"
    if len(one) <= 88:
        return one
    body = "".join(f"    {p},\n" for p in params)
    return f"{kw} {name}(\n{body}){ret}"


def render_api(package) -> str:
    """Render the API reference of ``package.__all__`` (Markdown), by pipeline stage."""
    names = set(package.__all__)
    groups: dict[str, list[str]] = {}
    for name in package.__all__:
        obj = getattr(package, name, None)
        mod = getattr(obj, "__module__", None) if not _is_data(obj) else None
        if mod is None:
            for cand, _ in API_SECTIONS:
                m = sys.modules.get(cand)
                if m is not None and getattr(m, name, None) is obj:
                    mod = cand
                    break
        groups.setdefault(mod or "other", []).append(name)
    order = [m for m, _ in API_SECTIONS] + sorted(set(groups) - {m for m, _ in API_SECTIONS})
    titles = dict(API_SECTIONS)
    out = [
        f"Generated from the docstrings of the {len(names)} names in `cdt_bayes.__all__` "
        f"(version {getattr(package, '__version__', '?')}). Shapes use the dimension names "
        "`n_nodes n_tets n_pmj n_leads n_times chain draw`; units are mm, ms, mm/ms and mV.",
        "",
    ]
    toc = []
    for mod in order:
        if mod not in groups:
            continue
        title = titles.get(mod, mod)
        links = ", ".join(f"[`{n}`](#{n})" for n in sorted(groups[mod], key=str.lower))
        toc.append(f"- **{title}** (`{mod}`): {links}")
    out += toc + [""]
    for mod in order:
        if mod not in groups:
            continue
        out += [f"## {titles.get(mod, mod)}", "", f"Module `{mod}`.", ""]
        for name in sorted(groups[mod], key=str.lower):
            obj = getattr(package, name)
            out += [f"### `{name}` {{#{name}}}", ""]
            if _is_data(obj):
                m = sys.modules.get(mod)
                doc = (constant_doc(m, name) if m else None) or CONSTANT_DOCS.get(name, "")
                out += ["```python", f"{name} = {obj!r}", "```", "", _inline(doc, names), ""]
                continue
            kind = "class" if inspect.isclass(obj) else "def"
            out += ["```python", _signature(obj, name, kind), "```", ""]
            doc = _own_doc(obj, name)
            if doc:
                out += [docstring_markdown(doc, names), ""]
            if inspect.isclass(obj):
                for mname, member in _public_members(obj):
                    if isinstance(member, property):
                        head = f"{name}.{mname}  # property"
                        mdoc = member.fget.__doc__ or ""
                    else:
                        head = _signature(member, f"{name}.{mname}", "method")
                        mdoc = member.__doc__ or ""
                    out += [
                        f"#### `{name}.{mname}` {{#{name}.{mname}}}",
                        "",
                        "```python",
                        head,
                        "```",
                        "",
                    ]
                    if mdoc.strip():
                        out += [docstring_markdown(inspect.cleandoc(mdoc), names), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Placeholders and source checks
# --------------------------------------------------------------------------------------


def _line_of(text: str, needle: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return None


def expand(page: str, text: str, ctx: dict, problems: list[Problem]) -> str:
    """Replace the ``<!-- generated: ... -->`` placeholders of one page."""

    def repl(m):
        kind, arg = m.group(1), m.group(2).strip()
        line = text[: m.start()].count("\n") + 1
        try:
            if kind == "cli":
                return render_cli_command(ctx["parser"], arg)
            if kind == "cli-commands":
                return render_cli_commands(ctx["parser"])
            if kind == "spec":
                return render_spec(arg or "default")
            if kind == "spec-variants":
                return render_spec_variants(ctx["package"])
            if kind == "priors":
                return render_priors(ctx["package"])
            if kind == "api":
                return render_api(ctx["package"])
            problems.append(Problem(page, line, f"unknown placeholder 'generated: {kind}'"))
        except Exception as e:  # noqa: BLE001 - any failure of a generator is a docs problem
            problems.append(
                Problem(page, line, f"generated: {kind} {arg}: {type(e).__name__}: {e}")
            )
        return ""

    for i, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*<!--\s*(generat|check)", line) and not (
            _PLACEHOLDER.match(line) or _CHECK_NAMES.match(line)
        ):
            problems.append(Problem(page, i, f"malformed marker {line.strip()!r}"))
    return _PLACEHOLDER.sub(repl, text)


_FENCE = re.compile(r"^(```|~~~)")


def _code_blocks(text: str):
    """Yield (line number, line) of lines inside fenced code blocks.

    Shell continuation lines (ending in a backslash) are joined to the next line and
    reported at the line where the command starts.
    """
    inside, start, acc = False, 0, ""
    for i, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            if acc:
                yield start, acc
            inside, acc = not inside, ""
            continue
        if not inside:
            continue
        if not acc:
            start = i
        if line.rstrip().endswith("\\"):
            acc += line.rstrip()[:-1] + " "
            continue
        yield start, acc + line
        acc = ""


def _strip_code(text: str) -> str:
    out, inside = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            inside = not inside
            out.append("")
            continue
        out.append("" if inside else line)
    return "\n".join(out)


_CMD = re.compile(r"(?:^|[\s`$/])cdt-bayes\s+([a-z]+)((?:\s+(?:\"[^\"]*\"|'[^']*'|[^\s`|;&#]+))*)")


def check_cli_mentions(
    page: str, text: str, options: dict[str, set[str]], problems: list[Problem]
) -> None:
    """Options written after ``cdt-bayes COMMAND`` (code blocks and inline code) must exist."""
    every = set().union(*options.values()) if options else set()
    candidates = list(_code_blocks(text))
    prose = _strip_code(text)  # same lines as text, code blocks blanked
    for m in re.finditer(r"`([^`\n]+)`", prose):
        candidates.append((prose[: m.start()].count("\n") + 1, m.group(1)))
    for lineno, line in candidates:
        for cm in _CMD.finditer(line):
            cmd, rest = cm.group(1), cm.group(2)
            if cmd not in options:
                if cmd not in ("COMMAND",):
                    problems.append(Problem(page, lineno, f"'cdt-bayes {cmd}': no such command"))
                continue
            for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                if opt not in options[cmd]:
                    problems.append(
                        Problem(page, lineno, f"'cdt-bayes {cmd} {opt}': no such option")
                    )
    # inline `--option` spans (outside command lines) must be an option of some command
    for m in re.finditer(r"`(--[a-z][a-z0-9-]*)(?:[ =][^`]*)?`", prose):
        opt = m.group(1)
        if opt not in every and opt not in FOREIGN_OPTIONS:
            line = prose[: m.start()].count("\n") + 1
            problems.append(Problem(page, line, f"'{opt}': no cdt-bayes command has this option"))


def make_targets(root: Path) -> set[str]:
    """Targets of the Makefile (``name:`` at the start of a line)."""
    mk = root / "Makefile"
    if not mk.is_file():
        return set()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", mk.read_text(), flags=re.M))


def check_make(page: str, text: str, targets: set[str], problems: list[Problem]) -> None:
    """Every ``make TARGET`` mentioned must be a Makefile target."""
    for i, line in enumerate(text.splitlines(), 1):
        for t in re.findall(r"(?:^|[\s`$(])make\s+([a-z][a-z0-9_-]*)", line):
            if t not in targets:
                problems.append(Problem(page, i, f"'make {t}': no such Makefile target"))


def _source_strings(root: Path) -> set[str]:
    out: set[str] = set()
    for p in sorted((root / "cdt_bayes").glob("*.py")):
        try:
            tree = ast.parse(p.read_text())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
                out.update(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", node.value))
    return out


def check_names_in_source(page: str, text: str, root: Path, problems: list[Problem]) -> None:
    """First-column names of tables marked ``<!-- check: names-in-source -->`` occur in the code."""
    lines = text.splitlines()
    strings = None
    for i, line in enumerate(lines):
        if not _CHECK_NAMES.search(line):
            continue
        if strings is None:
            strings = _source_strings(root)
        j = i + 1
        while j < len(lines) and not lines[j].lstrip().startswith("|"):
            j += 1
        rows = 0
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            cells = lines[j].strip().strip("|").split("|")
            rows += 1
            if rows > 2:  # skip header and separator
                for name in re.findall(r"`([^`]+)`", cells[0]):
                    for part in name.split("."):
                        part = part.split(" ")[0].split("(")[0]
                        if part and part not in strings:
                            problems.append(
                                Problem(
                                    page,
                                    j + 1,
                                    f"'{part}' (in '{name}') does not occur in the package source",
                                )
                            )
            j += 1
        if rows < 3:
            problems.append(
                Problem(page, i + 1, "'check: names-in-source' is not followed by a table")
            )


# --------------------------------------------------------------------------------------
# Rendering and link checks
# --------------------------------------------------------------------------------------


def _markdown():
    try:
        import markdown
    except ImportError:
        raise SystemExit(
            "docs: error: the 'markdown' package is missing; run 'make install' "
            "(it is in the test and docs dependency groups) or pip install markdown"
        ) from None
    return markdown.Markdown(
        extensions=["extra", "toc", "sane_lists"],
        extension_configs={"toc": {"permalink": False}},
        output_format="html",
    )


_HREF = re.compile(r'(<(?:a|img)\b[^>]*?\s(?:href|src)=")([^"]*)(")')
_ID = re.compile(r'\sid="([^"]+)"')


def render_pages(pages: dict[str, str]) -> dict[str, str]:
    """Markdown → HTML body of each page (no template)."""
    md = _markdown()
    out = {}
    for name, text in pages.items():
        md.reset()
        out[name] = md.convert(text)
    return out


def check_links(
    bodies: dict[str, str], sources: dict[str, str], root: Path, problems: list[Problem]
) -> dict[str, int]:
    """Check every relative link; return counts (``internal``, ``files``, ``external``)."""
    ids = {name: {html.unescape(i) for i in _ID.findall(body)} for name, body in bodies.items()}
    linked: set[str] = set()
    counts = {"internal": 0, "files": 0, "external": 0}
    for page, body in bodies.items():
        for m in _HREF.finditer(body):
            href = html.unescape(m.group(2))
            line = _line_of(sources[page], href.split("#")[0] or href) if href else None
            if re.match(r"^[a-z][a-z0-9+.-]*:", href):
                counts["external"] += 1  # http(s), mailto: not checked (no network)
                continue
            if href == "":
                problems.append(Problem(page, line, "empty link target"))
                continue
            path, _, anchor = href.partition("#")
            if path == "":
                target = page
            else:
                rel = posixpath.normpath(posixpath.join("docs", path))
                if (
                    rel.startswith("docs/")
                    and rel.count("/") == 1
                    and rel.endswith((".md", ".html"))
                ):
                    target = rel[len("docs/") :]
                    if target.endswith(".html"):
                        target = target[: -len(".html")] + ".md"
                    if target not in bodies:
                        problems.append(
                            Problem(page, line, f"broken link '{href}': no page {target}")
                        )
                        continue
                else:
                    if rel.startswith("../") or rel == "..":
                        problems.append(Problem(page, line, f"link '{href}' leaves the repository"))
                        continue
                    counts["files"] += 1
                    if not (root / rel).exists():
                        problems.append(
                            Problem(
                                page, line, f"broken link '{href}': no file {rel} in the repository"
                            )
                        )
                    elif anchor:
                        problems.append(
                            Problem(
                                page,
                                line,
                                f"link '{href}': anchors into repository files are not "
                                f"checked; drop '#{anchor}'",
                            )
                        )
                    continue
            counts["internal"] += 1
            if target != page:
                linked.add(target)
            if anchor and anchor not in ids[target]:
                problems.append(
                    Problem(page, line, f"broken anchor '{href}': no id '{anchor}' in {target}")
                )
    for page in bodies:
        if page != "index.md" and page not in linked:
            problems.append(Problem(page, None, "not linked from any other page"))
    return counts


def _rewrite_links(body: str, pages: set[str], root: Path, out: Path) -> str:
    def repl(m):
        href = html.unescape(m.group(2))
        if re.match(r"^[a-z][a-z0-9+.-]*:", href) or href.startswith("#") or not href:
            return m.group(0)
        path, sep, anchor = href.partition("#")
        rel = posixpath.normpath(posixpath.join("docs", path))
        if rel.startswith("docs/") and rel[len("docs/") :] in pages:
            new = rel[len("docs/") : -len(".md")] + ".html"
        else:
            new = Path(os.path.relpath(root / rel, out)).as_posix()
        return m.group(1) + html.escape(new + (sep + anchor if sep else "")) + m.group(3)

    return _HREF.sub(repl, body)


_CSS = """
body{font:16px/1.55 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f}
nav{background:#0b3d5c;padding:.6em 1.2em}nav a{color:#fff;margin-right:1.1em;text-decoration:none}
nav a.here{font-weight:700;text-decoration:underline}
main{max-width:60em;margin:0 auto;padding:1em 1.5em 4em}
code,pre{font:14px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6}
code{padding:0 .2em;border-radius:3px}pre{padding:.7em 1em;overflow-x:auto;border-radius:5px}
pre code{padding:0;background:none}
table{border-collapse:collapse;margin:1em 0;font-size:15px}
th,td{border:1px solid #d0d4da;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#eef1f5}h1,h2,h3{color:#0b3d5c}h3 code,h4 code{font-size:1em}
footer{color:#666;font-size:13px;margin-top:3em}
""".strip()


def _title(body: str, fallback: str) -> str:
    m = re.search(r"<h1[^>]*>(.*?)</h1>", body, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip() if m else fallback


def _page_html(name: str, body: str, order: list[str], titles: dict[str, str]) -> str:
    here = ' class="here"'
    nav = "".join(
        f'<a href="{p[:-3]}.html"{here if p == name else ""}>{html.escape(titles[p])}</a>'
        for p in order
    )
    title = titles[name]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)} — cdt_bayes</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<nav>{nav}</nav>\n<main>\n{body}\n"
        f"<footer>Built from <code>docs/{name}</code> by <code>docs/build.py</code>.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


_SHORT_TITLES = {
    "index.md": "Home",
    "user-guide.md": "User guide",
    "model.md": "Model",
    "reading-uncertainty.md": "Reading uncertainty",
    "bring-your-own-mesh.md": "Your own mesh",
    "api.md": "API",
    "design.md": "Design",
}


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def build(
    src: Path = DOCS, out: Path | None = None, root: Path = ROOT, quiet: bool = False
) -> list[Problem]:
    """Build every page of ``src`` into ``out``; return the problems found (empty: success)."""
    out = Path(out) if out is not None else src / "_build"
    problems: list[Problem] = []
    names = sorted(p.name for p in Path(src).glob("*.md"))
    if "index.md" not in names:
        problems.append(Problem("index.md", None, f"missing from {src}"))
    sources = {n: (Path(src) / n).read_text(encoding="utf-8") for n in names}

    package = _import_package()
    from cdt_bayes._cli import build_parser

    ctx = {"parser": build_parser(), "package": package}
    options = cli_options(ctx["parser"])
    targets = make_targets(root)

    expanded = {}
    for n in names:
        expanded[n] = expand(n, sources[n], ctx, problems)
        check_cli_mentions(n, sources[n], options, problems)
        check_make(n, sources[n], targets, problems)
        check_names_in_source(n, sources[n], root, problems)
    problems += [
        Problem("api.md", None, f"cdt_bayes.__all__: {p}") for p in docstring_problems(package)
    ]

    bodies = render_pages(expanded)
    counts = check_links(bodies, sources, root, problems)

    out.mkdir(parents=True, exist_ok=True)
    order = [p for p in NAV if p in names] + [p for p in names if p not in NAV]
    titles = {p: _SHORT_TITLES.get(p) or _title(bodies[p], p[:-3]) for p in order}
    for n in names:
        body = _rewrite_links(bodies[n], set(names), root, out.resolve())
        (out / f"{n[:-3]}.html").write_text(_page_html(n, body, order, titles), encoding="utf-8")
        (out / n).write_text(expanded[n], encoding="utf-8")  # the expanded Markdown, for reference
    if not quiet:
        print(
            f"docs: {len(names)} pages -> {out} ({counts['internal']} internal links, "
            f"{counts['files']} links to repository files checked; {counts['external']} "
            f"external links not checked); {len(problems)} problem(s)",
            file=sys.stderr,
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python docs/build.py [--src DIR] [--out DIR] [--quiet]``."""
    ap = argparse.ArgumentParser(prog="docs/build.py", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--src", type=Path, default=DOCS, help="folder of the *.md pages (default: docs/)"
    )
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: SRC/_build)")
    ap.add_argument("--quiet", action="store_true", help="print problems only")
    args = ap.parse_args(argv)
    problems = build(args.src, args.out, ROOT, args.quiet)
    for p in problems:
        print(f"docs: error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
