"""The package's shape, checked from its source with ``ast`` (lazy imports inside functions count).

- rooms (top-level modules and sub-packages of ``pipeline_lib``) import each other without circles,
  and ``upscale`` and ``generate`` never import each other;
- no module imports another module's private (``_name``) names;
- front ends (CLI, HTTP server, widgets) import other rooms only through names those rooms
  publish in ``__all__``;
- package ``__init__`` files only re-export; every module with public names declares ``__all__``;
- no function is longer than 80 lines;
- no block of six or more lines is repeated (same lines, or the same shape with other names,
  strings and numbers).
"""
from __future__ import annotations

import ast
import io
import tokenize
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline_lib"
FRONT_ENDS = {"cli", "commands", "server", "widgets", "__main__"}
MAX_FUNCTION_LINES = 80
MIN_DUPLICATE_LINES = 6


@lru_cache(maxsize=None)
def modules() -> dict[str, tuple[Path, bool, ast.Module]]:
    """dotted name → (file, is package, parsed tree)."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (f, is_pkg, ast.parse(f.read_text(encoding="utf-8")))
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline_lib"


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports() -> list[tuple[str, str, str | None]]:
    """(importing module, imported module, imported name or None) for every pipeline_lib import."""
    mods = modules()
    found = []
    for name, (_f, is_pkg, tree) in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(name, is_pkg, node)
                if not target or not target.split(".")[0] == "pipeline_lib":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:  # "from . import module": the module itself is imported
                        found.append((name, sub, None))
                    else:
                        found.append((name, target, alias.name))
            elif isinstance(node, ast.Import):
                found += [(name, a.name, None) for a in node.names
                          if a.name.split(".")[0] == "pipeline_lib"]
    return found


def room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, _ in imports():
        if room(src) != room(dst):
            graph[room(src)].add(room(dst))
    return graph


def declared_all(module: str) -> set[str] | None:
    entry = modules().get(module)
    if entry is None:
        return None
    for node in entry[2].body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                return set(ast.literal_eval(node.value))
    return None


def test_rooms_import_each_other_without_circles():
    graph = room_graph()
    cycles = []

    def visit(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, "import circles between rooms: " + "; ".join(" → ".join(c) for c in cycles[:5])


def test_upscale_and_generate_never_import_each_other():
    graph = room_graph()
    assert "generate" not in graph.get("upscale", set())
    assert "upscale" not in graph.get("generate", set())


def test_no_private_name_crosses_modules():
    bad = [f"{src} imports {name} from {dst}" for src, dst, name in imports()
           if name and name.startswith("_") and not name.startswith("__") and dst != src]
    bad += [f"{src} imports the private module {dst}" for src, dst, name in imports()
            if name is None and any(p.startswith("_") and not p.startswith("__")
                                    for p in dst.split("."))]
    assert not bad, "\n".join(bad)


def test_front_ends_import_only_published_names():
    bad = []
    for src, dst, name in imports():
        if room(src) not in FRONT_ENDS or room(dst) == room(src) or room(dst) == "errors":
            continue
        if name is None:
            continue  # a public module: its own __all__ is checked where names are taken from it
        published = declared_all(dst)
        if published is None or name not in published:
            bad.append(f"{src} imports {name} from {dst}, which does not publish it in __all__")
    assert not bad, "\n".join(bad)


def _defines_logic(tree: ast.Module) -> list[str]:
    return [getattr(n, "name", type(n).__name__) for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and n.name != "__getattr__" and n.name != "__dir__"]


def test_package_inits_only_reexport():
    bad = {}
    for name, (_f, is_pkg, tree) in modules().items():
        if is_pkg and _defines_logic(tree):
            bad[name] = _defines_logic(tree)
    assert not bad, f"package __init__ files define logic: {bad}"


def test_every_module_declares_all():
    missing = [name for name, (_f, _p, tree) in modules().items()
               if not name.endswith("__main__") and declared_all(name) is None
               and any(not n.name.startswith("_") for n in tree.body
                       if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
    assert not missing, f"modules without __all__: {missing}"


def test_no_function_longer_than_80_lines():
    long = []
    for name, (_f, _p, tree) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


# ---------------------------------------------------------------- repeated blocks
def _shape_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, the line's shape): names → N, strings → S, numbers → 0; comments, blank
    lines, docstrings and lines of punctuation alone are left out."""
    shapes: dict[int, list[str]] = defaultdict(list)
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    doc_lines = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    keywords = {"def", "class", "return", "if", "else", "elif", "for", "while", "try", "except",
                "finally", "with", "as", "import", "from", "raise", "in", "not", "and", "or",
                "is", "None", "True", "False", "lambda", "yield", "async", "await", "pass"}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.start[0] in doc_lines or tok.type in (tokenize.COMMENT, tokenize.NL,
                                                     tokenize.NEWLINE, tokenize.INDENT,
                                                     tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        if tok.type == tokenize.NAME:
            word = tok.string if tok.string in keywords else "N"
        elif tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_START", -1):
            word = "S"
        elif tok.type in (getattr(tokenize, "FSTRING_MIDDLE", -1), getattr(tokenize, "FSTRING_END", -1)):
            continue
        elif tok.type == tokenize.NUMBER:
            word = "0"
        else:
            word = tok.string
        shapes[tok.start[0]].append(word)
    out = []
    for line, words in sorted(shapes.items()):
        if words[0] in ("import", "from") or words[:1] == ["@"]:
            continue  # import lists and decorators are boilerplate, not logic
        if sum(w not in "()[]{},:." for w in words) >= 2:  # a lone bracket or name is no evidence
            out.append((line, " ".join(words)))
    return out


def _is_boilerplate(window: tuple[str, ...]) -> bool:
    """Field declarations and similar lists: few distinct line shapes, nothing computed."""
    return len(set(window)) < 4


def repeated_blocks(min_lines: int = MIN_DUPLICATE_LINES) -> list[str]:
    seen: dict[tuple[str, ...], tuple[str, int, int]] = {}
    found = []
    for name, (f, _p, _t) in modules().items():
        lines = _shape_lines(f)
        last_hit_end: dict[str, int] = {}
        for i in range(len(lines) - min_lines + 1):
            window = tuple(s for _, s in lines[i:i + min_lines])
            start, end = lines[i][0], lines[i + min_lines - 1][0]
            if _is_boilerplate(window):
                continue
            first = seen.get(window)
            if first is None:
                seen[window] = (name, start, end)
                continue
            if first[0] == name and first[2] >= start:
                continue  # overlaps itself (a repeated single line, e.g. a table)
            key = f"{first[0]}~{name}"
            if last_hit_end.get(key, -1) >= start:
                continue  # the same run, one line further
            last_hit_end[key] = end
            found.append(f"{first[0]}:{first[1]}-{first[2]} ~ {name}:{start}-{end}")
    return found


def test_no_block_of_six_lines_repeated():
    found = repeated_blocks()
    assert not found, "repeated blocks (make one piece of code serve both):\n" + "\n".join(found)


def test_the_duplicate_finder_finds_a_renamed_copy(tmp_path):
    """The checker itself: a copy with other names and values is found, distinct code is not."""
    block = ("def f(a, b):\n    x = a + 1\n    y = b * 2\n    if x > y:\n        return x - y\n"
             "    z = g(x, 'one')\n    return z + y\n")
    renamed = block.replace("f(", "h(").replace("a", "p").replace("'one'", "'two'")
    other = "def k(q):\n    return [q] * 3\n"
    src = tmp_path / "m.py"
    src.write_text(block + "\n\n" + renamed + "\n\n" + other)
    lines = _shape_lines(src)
    windows = [tuple(s for _, s in lines[i:i + 6]) for i in range(len(lines) - 5)]
    assert len(windows) != len(set(windows))
    src.write_text(block + "\n\n" + other)
    lines = _shape_lines(src)
    windows = [tuple(s for _, s in lines[i:i + 6]) for i in range(len(lines) - 5)]
    assert len(windows) == len(set(windows))


@pytest.mark.parametrize("front", sorted(FRONT_ENDS - {"__main__"}))
def test_front_end_exists(front):
    assert (PKG / f"{front}.py").is_file() or (PKG / front / "__init__.py").is_file()
