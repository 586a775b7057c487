"""Group ``NoduleMalignancyLib/core`` by concept into sub-folders (issue 27, item 5).

Usage, from anywhere (it works on the repository that holds this file)::

    python docs/dev/group_core.py            # move and rewrite, then ruff (isort + format)
    python docs/dev/group_core.py --dry-run  # say what would move and which files would change

Idempotent: a second run finds nothing to move or rewrite. Everything is derived from
:data:`GROUPS` and from scanning the files (git's tracked and untracked, not ignored ones):

* the modules move with ``git mv`` (a plain rename for an untracked one); each group gets an
  ``__init__.py`` with a one-line docstring (:data:`DOCS`), added to git;
* import statements (by their AST, function-level ones too): relative ones inside the core are
  recomputed from the module's new place (``from .geometry`` -> ``from ..geometry``, ``from
  .vessel`` -> ``from ..scope.vessel``, ``from . import vessel``), ``from ..core import vessel,
  network`` is split by group, absolute ones follow (``NoduleMalignancyLib.core.vessel``);
* relative imports inside string snippets that a test writes into a moved module's file
  (``voi = copy / "core" / "voi.py"``; ``voi.write_text(... "from ..mrml import logic")``);
* dotted names in any text (monkeypatch targets, background-import lists, ``python -m``,
  docstrings: ``NoduleMalignancyLib.core.vessel``, ``..core.vessel``, ``".core.analysis"``,
  ``core.assessment.answer_lines``) and paths (``core/vessel.py``, ``core/exam.ExamPoint``,
  ``"core" / "vessel.py"``) in *.py, *.md, *.txt (CMakeLists), *.toml, *.cfg, *.yml, Makefile,
  Dockerfile;
* docs/DESIGN.md §1's core row and README.md's layout tree name the groups;
* a trailing comment that a longer path pushes past 100 columns moves above its code line.

Not rewritten: bare file names without ``core/`` (``voi.py`` in prose), Sphinx-style relative
roles inside the core (``:func:`.fusion.calibration_slope```, which Sphinx resolves by suffix),
JSON records of past runs, and anything outside git's file list (caches, installed copies).
A core module that :data:`GROUPS` does not name stays in ``core/`` and is printed.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

PACKAGE = "NoduleMalignancyLib"
# group -> modules; the modules of STAY (and any module named nowhere) stay in core/.
STAY = ("errors", "settings", "extras", "atomic", "geometry", "config", "device", "result_schema")
GROUPS = {
    "model": ("network", "ensemble", "fusion", "gates", "folds", "similar", "metrics"),
    "nodule": (
        "analysis",
        "voi",
        "recentre",
        "measurements",
        "evidence",
        "explanation",
        "attributes",
    ),
    "scope": ("validation", "assessment", "lung_mask", "vessel", "curvature"),
    "clinical": (
        "lung_rads",
        "lung_rads_followup",
        "lung_rads_table",
        "brock",
        "brock_inputs",
        "exam",
    ),
    "prior": ("exam_prior", "prior_compare", "registration", "growth"),
}
DOCS = {
    "model": "The network and what its folds make: the ensemble, fusion, gate health, patient "
    "folds, similar nodules, metrics.",
    "nodule": "One nodule, one click: the VOI, recentring, the analysis, measurements, evidence "
    "maps, explanation, LIDC attributes.",
    "scope": "What the model may answer: the input checks and refusals, the answer's tier, the "
    "lung field, the vessel and curvature checks.",
    "clinical": "The clinical rules: Lung-RADS (category, follow-up, table), the Brock model and "
    "its inputs, the exam.",
    "prior": "A prior CT: the nodule found on it, the registration, the comparison and the "
    "growth (volume doubling time).",
}
GROUP_OF = {module: group for group, modules in GROUPS.items() for module in modules}
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".sh", ".rst"}
TEXT_NAMES = {"Makefile", "Dockerfile", "CMakeLists.txt"}
SKIP_PARTS = {".venv", ".git", "__pycache__", "build", "dist", "node_modules"}

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / PACKAGE / "core"

_NAMES = "|".join(sorted(GROUP_OF, key=len, reverse=True))
# NoduleMalignancyLib.core.vessel, ..core.vessel, ".core.analysis", core.assessment.answer_lines;
# not trame_slicer.core.x nor core.scope.vessel (already moved).
DOTTED = re.compile(
    rf"(?P<pre>\b{PACKAGE}\.|(?<![\w.])\.+|(?<![\w./-]))core\.(?P<mod>{_NAMES})(?![\w])"
)
# core/vessel.py, NoduleMalignancyLib/core/vessel.py, core/exam.ExamPoint, `core/exam_prior`
SLASHED = re.compile(rf"(?<![\w-])core/(?P<mod>{_NAMES})(?![\w/])")
# copy / "core" / "vessel.py"
PATHLIB = re.compile(
    rf"(?P<q>[\"'])core(?P=q)(?P<sep>\s*/\s*)(?P<q2>[\"'])(?P<mod>{_NAMES})\.py(?P=q2)"
)
RELATIVE_IN_TEXT = re.compile(r"(?:(?<![\w])|(?<=\\n))from(\s+)(\.+)([\w.]*)(\s+)import\b")


def new_parts(parts: list[str]) -> list[str]:
    """``NoduleMalignancyLib.core.vessel[.x]`` -> ``NoduleMalignancyLib.core.scope.vessel[.x]``."""
    if len(parts) >= 3 and parts[:2] == [PACKAGE, "core"] and parts[2] in GROUP_OF:
        return [PACKAGE, "core", GROUP_OF[parts[2]], *parts[2:]]
    return list(parts)


def module_of(path: Path) -> list[str] | None:
    """The dotted module of a file in the package (``__init__`` -> the package), else None."""
    try:
        rel = path.relative_to(ROOT)
    except ValueError:
        return None
    if rel.parts[0] != PACKAGE:
        return None
    parts = list(rel.with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def package_of(path: Path, module: list[str]) -> list[str]:
    return module if path.name == "__init__.py" else module[:-1]


def resolve(package: list[str], level: int, module: str | None) -> list[str]:
    base = package[: len(package) - level + 1]
    return base + (module.split(".") if module else [])


def relative(from_package: list[str], target: list[str]) -> str:
    common = 0
    while common < min(len(from_package), len(target)) and from_package[common] == target[common]:
        common += 1
    return "." * (len(from_package) - common + 1) + ".".join(target[common:])


class Edits:
    """Text replacements by AST position (UTF-8 byte columns), applied back to front."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.edits: list[tuple[int, int, str]] = []

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (
            self.offset(node.lineno, node.col_offset),
            self.offset(node.end_lineno, node.end_col_offset),
        )

    def replace(self, node: ast.AST, new: str) -> None:
        start, end = self.span(node)
        if self.text[start:end] != new:
            self.edits.append((start, end, new))

    def apply(self) -> str:
        text = self.text
        for start, end, new in sorted(self.edits, reverse=True):
            text = text[:start] + new + text[end:]
        return text


def _alias(a: ast.alias) -> str:
    return a.name if a.asname is None else f"{a.name} as {a.asname}"


def rewrite_import_from(node, source, old_package, new_package, notes, where):
    """The statement's new text, or None when it stays."""
    if node.level and old_package is None:
        return None  # a relative import outside the package (a test folder's own)
    target = resolve(old_package, node.level, node.module) if node.level else node.module.split(".")

    def head(parts):
        return relative(new_package, parts) if node.level else ".".join(parts)

    if target == [PACKAGE, "core"] and any(a.name in GROUP_OF for a in node.names):
        by_group: dict[str | None, list[ast.alias]] = {}
        for a in node.names:
            by_group.setdefault(GROUP_OF.get(a.name), []).append(a)
        statements = []
        for group, aliases in by_group.items():
            parts = target + ([group] if group else [])
            statements.append(f"from {head(parts)} import {', '.join(map(_alias, aliases))}")
        if len(by_group) == 1:
            (group,) = by_group
            new_head = f"from {head(target + [group])} import"
            return re.sub(r"^from\s+[.\w]+\s+import", new_head, source, count=1)
        if "#" in source:
            notes.append(f"{where}: a comment inside the split import was dropped")
        return statements
    new_head = head(new_parts(target))
    old_head = "." * node.level + (node.module or "")
    if new_head == old_head:
        return None
    return re.sub(r"^from\s+[.\w]+\s+import", f"from {new_head} import", source, count=1)


def rewrite_snippet(literal: str, old_module: list[str], new_module: list[str]) -> str:
    """Relative imports in a string written into a moved module's file, from its new place."""

    def sub(m):
        target = resolve(old_module[:-1], len(m.group(2)), m.group(3))
        new = relative(new_module[:-1], new_parts(target))
        return f"from{m.group(1)}{new}{m.group(4)}import"

    return RELATIVE_IN_TEXT.sub(sub, literal)


def rewrite_python(path: Path, text: str, new_path: Path, notes: list[str]) -> str:
    """Every import statement (and test snippet) of one file, for the module's new place."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        notes.append(f"{path.relative_to(ROOT)}: not parsed ({exc.msg}), imports left as they are")
        return text
    module = module_of(path)
    old_package = package_of(path, module) if module else None
    new_module = module_of(new_path)
    new_package = package_of(new_path, new_module) if new_module else None
    edits = Edits(text)
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom):
            source = ast.get_source_segment(text, node)
            new = rewrite_import_from(node, source, old_package, new_package, notes, where)
            if isinstance(new, list):
                line = edits.lines[node.lineno - 1]
                indent = line[: len(line) - len(line.lstrip())]
                alone = line.strip().startswith(source.splitlines()[0].strip())
                new = (f"\n{indent}" if alone else "; ").join(new)
            if new is not None:
                edits.replace(node, new)
        elif isinstance(node, ast.Import):
            source = ast.get_source_segment(text, node)
            new = source
            for a in node.names:
                moved = ".".join(new_parts(a.name.split(".")))
                if moved != a.name:
                    new = re.sub(rf"(?<![\w.]){re.escape(a.name)}(?![\w])", moved, new, count=1)
            edits.replace(node, new)
    if module is None or module[:2] != [PACKAGE, "core"]:
        _snippets(tree, text, edits)
    return edits.apply()


def _snippets(tree: ast.AST, text: str, edits: Edits) -> None:
    """``voi = copy / "core" / "voi.py"`` then ``voi.write_text(... "from ..mrml import x")``:
    the snippet's relative imports are recomputed for voi's new place (per function)."""
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in scopes:
        files: dict[str, str] = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                m = PATHLIB.search(ast.get_source_segment(text, node.value) or "")
                if isinstance(target, ast.Name) and m:
                    files[target.id] = m.group("mod")
        for node in ast.walk(scope):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "write_text"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in files
            ):
                continue
            name = files[node.func.value.id]
            old_module = [PACKAGE, "core", name]
            for const in ast.walk(node):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    source = ast.get_source_segment(text, const)
                    edits.replace(const, rewrite_snippet(source, old_module, new_parts(old_module)))


def rewrite_text(text: str) -> str:
    text = DOTTED.sub(lambda m: f"{m['pre']}core.{GROUP_OF[m['mod']]}.{m['mod']}", text)
    text = SLASHED.sub(lambda m: f"core/{GROUP_OF[m['mod']]}/{m['mod']}", text)
    return PATHLIB.sub(
        lambda m: (
            f"{m['q']}core{m['q']}{m['sep']}{m['q']}{GROUP_OF[m['mod']]}{m['q']}"
            f"{m['sep']}{m['q2']}{m['mod']}.py{m['q2']}"
        ),
        text,
    )


def lift_long_comments(old: str, new: str, width: int = 100) -> str:
    """A trailing comment that the longer paths push past ``width`` moves onto its own line
    above its code (else ruff format would wrap the statement around it)."""
    if old == new:
        return new
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(new).readline))
    except (tokenize.TokenError, SyntaxError):
        return new
    before = set(old.splitlines())
    lines = new.splitlines(keepends=True)
    for tok in reversed(tokens):
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        line = lines[row - 1]
        code = line[:col].rstrip()
        if not code.strip() or len(line.rstrip("\n")) <= width or line.rstrip("\n") in before:
            continue
        indent = line[: len(line) - len(line.lstrip())]
        lines[row - 1] = f"{indent}{tok.string}\n{code}\n"
    return "".join(lines)


def text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for rel in sorted(set(filter(None, out.split("\0")))):
        path = ROOT / rel
        if SKIP_PARTS & set(Path(rel).parts) or not path.is_file() or path.is_symlink():
            continue
        if path.resolve() == Path(__file__).resolve():
            continue  # this script names the old places on purpose
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            files.append(path)
    return files


def tracked(path: Path) -> bool:
    return (
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(path)],
            cwd=ROOT,
            capture_output=True,
        ).returncode
        == 0
    )


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def core_row(modules_at_root: list[str]) -> str:
    """docs/DESIGN.md §1's "what lives there" cell for the core."""
    groups = "; ".join(
        f"`{g}/` ({_lower_first(DOCS[g].split(':')[0].rstrip('.'))}: "
        + ", ".join(f"`{m}`" for m in GROUPS[g])
        + ")"
        for g in GROUPS
    )
    root = ", ".join(f"`{m}`" for m in modules_at_root)
    return (
        "numpy, torch, SimpleITK and scipy only, grouped by concept: at its root what every "
        f"group uses ({root}); {groups}"
    )


def update_design(modules_at_root: list[str], dry_run: bool) -> bool:
    path = ROOT / "docs" / "DESIGN.md"
    if not path.is_file():
        return False
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        cells = line.split(" | ")
        if line.startswith("| 0 core |") and len(cells) >= 4:
            cells[2] = core_row(modules_at_root)
            new = " | ".join(cells)
            if new != line:
                lines[i] = new
                if not dry_run:
                    path.write_text("".join(lines), encoding="utf-8")
                return True
            return False
    print("docs/DESIGN.md: no '| 0 core |' row found; name the groups there by hand")
    return False


def update_readme(dry_run: bool) -> bool:
    """README.md's layout tree: the core's entries under their group's folder."""
    path = ROOT / "README.md"
    if not path.is_file():
        return False
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"  core/\s", line)), None)
    if start is None:
        return False
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith("    ")):
        end += 1
    block = lines[start + 1 : end]
    if any(re.match(rf"    ({'|'.join(GROUPS)})/\s", line) for line in block):
        return False  # already grouped
    entries: list[list[str]] = []
    for line in block:
        if line.startswith("     ") and entries:
            entries[-1].append(line)  # a continuation line
        else:
            entries.append([line])
    root, grouped = [], {g: [] for g in GROUPS}
    for entry in entries:
        names = re.match(r"\s*((?:\w+\.py,?\s?)+)", entry[0])
        modules = re.findall(r"(\w+)\.py", names.group(1)) if names else []
        groups = [GROUP_OF.get(m) for m in modules]
        if not modules or groups[0] is None:
            root.append(entry)
            continue
        first = groups[0]
        head = entry[0]
        for m, g in zip(modules, groups, strict=True):  # a module of another group: its path
            if g != first:
                head = re.sub(rf"\b{m}\.py", f"{'../' + g + '/' if g else '../'}{m}.py", head)
        head = re.sub(
            r"^    (\S.*?\S)(\s{3,})",
            lambda m: f"      {m[1]}{m[2][2:] if len(m[2]) > 3 else '  '}",
            head,
        )
        grouped[first].append([head, *entry[1:]])
    out = [line for entry in root for line in entry]
    for g in GROUPS:
        out.append(f"    {g + '/':<15}{_lower_first(DOCS[g].split(':')[0].rstrip('.'))}\n")
        listed = {m for entry in grouped[g] for m in re.findall(r"(\w+)\.py", entry[0])}
        rest = [m for m in GROUPS[g] if m not in listed]
        out += [line for entry in grouped[g] for line in entry]
        if rest:
            out.append(f"      {', '.join(m + '.py' for m in rest)}\n")
    lines[start + 1 : end] = out
    if not dry_run:
        path.write_text("".join(lines), encoding="utf-8")
    return True


def ruff(paths: list[Path]) -> None:
    exe = ROOT / ".venv" / "bin" / "ruff"
    exe = str(exe) if exe.is_file() else shutil.which("ruff")
    if exe is None:
        print("ruff not found: run `ruff check --select I --fix . && ruff format .` by hand")
        return
    names = [str(p.relative_to(ROOT)) for p in paths if p.suffix == ".py" and p.is_file()]
    if names:
        subprocess.run(
            [exe, "check", "-q", "--select", "I", "--fix", *names], cwd=ROOT, check=False
        )
        subprocess.run([exe, "format", "-q", *names], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="change nothing, say what would")
    args = parser.parse_args(argv)

    moves: dict[Path, Path] = {}
    for module, group in GROUP_OF.items():
        old, new = CORE / f"{module}.py", CORE / group / f"{module}.py"
        if old.is_file() and new.exists():
            sys.exit(f"both {old.relative_to(ROOT)} and {new.relative_to(ROOT)} exist")
        if old.is_file():
            moves[old] = new
        elif not new.is_file():
            print(f"core/{module}.py: not found (neither in core/ nor in core/{group}/)")
    known = set(GROUP_OF) | set(STAY) | {"__init__"}
    for path in sorted(CORE.glob("*.py")):
        if path.stem not in known:
            print(f"core/{path.name}: not in the mapping, stays in core/")

    notes: list[str] = []
    changed: list[Path] = []
    for path in text_files():
        text = path.read_text(encoding="utf-8")
        new = text
        if path.suffix == ".py":
            new = rewrite_python(path, new, moves.get(path, path), notes)
        new = rewrite_text(new)
        if path.suffix == ".py":
            new = lift_long_comments(text, new)
        if new != text:
            changed.append(moves.get(path, path))
            if not args.dry_run:
                path.write_text(new, encoding="utf-8")

    for old, new in moves.items():
        print(
            f"{'would move' if args.dry_run else 'move'} {old.relative_to(ROOT)} -> "
            f"{new.relative_to(ROOT)}"
        )
        if args.dry_run:
            continue
        new.parent.mkdir(exist_ok=True)
        if tracked(old):
            subprocess.run(["git", "mv", str(old), str(new)], cwd=ROOT, check=True)
        else:
            old.rename(new)
    for group in GROUPS:
        init = CORE / group / "__init__.py"
        if (CORE / group).is_dir() and not init.exists() and not args.dry_run:
            init.write_text(f'"""{DOCS[group]}"""\n', encoding="utf-8")
            subprocess.run(["git", "add", str(init)], cwd=ROOT, check=True)
            changed.append(init)

    at_root = sorted(p.stem for p in CORE.glob("*.py") if p.stem not in {*GROUP_OF, "__init__"})
    if update_design(at_root, args.dry_run):
        print("docs/DESIGN.md: §1's core row names the groups")
    if update_readme(args.dry_run):
        print("README.md: the layout tree groups the core")
    if not args.dry_run:
        ruff(changed)
    for note in notes:
        print(note)
    verb = "would change" if args.dry_run else "changed"
    print(f"{len(moves)} modules moved, {len(changed)} files {verb}")
    for path in changed:
        print(f"  {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
