#!/usr/bin/env python3
"""Module cycles inside each crate of the workspace.

For every crates/NAME/src, each file is a module (lib.rs/main.rs the crate
root, DIR/mod.rs the module DIR; src/bin/ is left out, its files are crates
of their own). Module A depends on module B when A's code names a path
into B through `crate::`, `super::` or `self::` (use trees with braces
included). A reference to the module itself or to one of its ancestors is
no dependency: a child always sits inside its parent. Comments, string
literals and `#[cfg(test)]` items (a `mod tests { ... }` block, or a
`mod tests;` file, which is then left out too) are not read, nor are tests/
and benches/: test code may reach anywhere.

Every strongly connected component of more than one module is a cycle; it
is printed with the arrows between its members:

    CRATE: module cycle: a, b, c
        a -> b
        ...

usage: scripts/modcycles.py [--why] [REPO_ROOT]
    --why   after each arrow, where the first reference behind it is
exit status: 0 no cycle, 1 a cycle in some crate, 2 usage error.
"""

import os
import re
import signal
import sys

IDENT = re.compile(r"r#[A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*")
CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")


def ident_before(text, i):
    """Whether an identifier character precedes offset `i` (so that an `r`
    there is part of a name, not a raw string's prefix; `br"` is one)."""
    if i and text[i - 1] == "b":
        i -= 1
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")


def blank(text):
    """The source with comments, string and char literals replaced by
    spaces (newlines kept, so offsets keep their line numbers)."""
    out = list(text)
    i, n = 0, len(text)

    def wipe(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 260]) and not ident_before(text, i):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + len(hashes) + 2)
            j = n if end < 0 else end + 1 + len(hashes)
            wipe(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}'), or a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]*\}|\\.|[^\\'])'", text[i:i + 12])
            if m:
                wipe(i, i + m.end())
                i += m.end()
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def skip_item(text, i):
    """The offset just past the item that starts at `i` (after an
    attribute): up to its first `;` at depth 0, or its `{ ... }` block."""
    depth, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ";" and depth == 0:
            return i + 1
        elif c == "{" and depth == 0:
            braces = 0
            while i < n:
                if text[i] == "{":
                    braces += 1
                elif text[i] == "}":
                    braces -= 1
                    if braces == 0:
                        return i + 1
                i += 1
            return n
        i += 1
    return n


def drop_test_items(text):
    """`text` (already blanked) without its #[cfg(test)] items, and the
    names of the `mod NAME;` files that only tests compile."""
    test_mods = set()
    out = list(text)
    pos = 0
    while True:
        m = CFG_TEST.search(text, pos)
        if not m:
            break
        end = skip_item(text, m.end())
        item = text[m.end():end]
        decl = re.fullmatch(r"\s*(?:#\s*\[[^\]]*\]\s*)*(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(\w+)\s*;", item)
        if decl:
            test_mods.add(decl.group(1))
        for k in range(m.start(), end):
            if out[k] != "\n":
                out[k] = " "
        pos = end
    return "".join(out), test_mods


def use_paths(text, i):
    """The paths of the path or use tree starting at offset `i` (a path's
    first segment), each a list of segments, with the offset it ends at."""
    n = len(text)

    def ws(i):
        while i < n and text[i].isspace():
            i += 1
        return i

    def tree(i):
        segs = []
        while True:
            i = ws(i)
            if i < n and text[i] == "{":
                paths, i = group(i + 1)
                return [segs + p for p in paths], i
            if i < n and text[i] == "*":
                return [segs], i + 1
            m = IDENT.match(text, i)
            if not m:
                return [segs], i
            segs.append(m.group(0))
            i = ws(m.end())
            if text.startswith("::", i):
                i += 2
                continue
            return [segs], i

    def group(i):
        paths = []
        while True:
            i = ws(i)
            if i >= n:
                return paths, i
            if text[i] == "}":
                return paths, i + 1
            if text[i] == ",":
                i += 1
                continue
            sub, j = tree(i)
            paths += sub
            j = ws(j)
            m = re.compile(r"as\s+\w+").match(text, j)  # `x as y`
            if m:
                j = m.end()
            if j == i:  # nothing parsed: give up on this group
                return paths, n
            i = j

    return tree(i)


def module_of(rel):
    """Module path (a tuple) of a file relative to src/, or None when it is
    not a module of this crate (src/bin/)."""
    parts = rel[:-3].split(os.sep)
    if parts[0] == "bin":
        return None
    if parts == ["lib"] or parts == ["main"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def resolve(module, segs):
    """The absolute module path a crate/super/self path names, or None."""
    if not segs:
        return None
    head = segs[0]
    if head == "crate":
        return tuple(segs[1:])
    if head not in ("super", "self"):
        return None
    base = list(module)
    rest = segs
    if rest[0] == "self":
        rest = rest[1:]
    while rest and rest[0] == "super":
        if not base:
            return None  # super of the root: not this crate
        base.pop()
        rest = rest[1:]
    return tuple(base + rest)


def crate_graph(src, root="."):
    """{module: {dependency: (file, line, path text)}} for one crate."""
    files = {}
    for d, dirs, fs in os.walk(src):
        dirs.sort()
        for f in sorted(fs):
            if f.endswith(".rs"):
                path = os.path.join(d, f)
                m = module_of(os.path.relpath(path, src))
                if m is not None:
                    files[m] = path
    texts, test_only = {}, set()
    for m, path in files.items():
        with open(path, encoding="utf-8", errors="replace") as fh:
            text, test_mods = drop_test_items(blank(fh.read()))
        texts[m] = text
        test_only |= {m + (t,) for t in test_mods}
    mods = {m for m in files if not any(m[:len(t)] == t for t in test_only)}

    graph = {m: {} for m in mods}
    for m in mods:
        text = texts[m]
        for hit in re.finditer(r"(?<![\w$])(crate|super|self)\s*::", text):
            for segs in use_paths(text, hit.start())[0]:
                target = resolve(m, segs)
                if target is None:
                    continue
                # The longest prefix of the path that is a module file.
                dep = next((target[:k] for k in range(len(target), 0, -1) if target[:k] in mods), None)
                if dep is None or m[:len(dep)] == dep:
                    continue  # not a file module, or the module or an ancestor
                if dep not in graph[m]:
                    line = text.count("\n", 0, hit.start()) + 1
                    where = f"{os.path.relpath(files[m], root)}:{line} {'::'.join(segs)}"
                    graph[m][dep] = where
    return graph


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan's
    algorithm, iterative), each sorted, in sorted order."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp, key="::".join))
    return sorted(out, key=lambda c: ["::".join(m) for m in c])


def main(argv):
    why = "--why" in argv
    args = [a for a in argv if a != "--why"]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: " + __doc__.strip().split("usage: ")[1], file=sys.stderr)
        return 2
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    crates = os.path.join(root, "crates")
    if not os.path.isdir(crates):
        print(f"modcycles: no crates/ in {root}", file=sys.stderr)
        return 2
    name = lambda m: "::".join(m)
    found = False
    for crate in sorted(os.listdir(crates)):
        src = os.path.join(crates, crate, "src")
        if not os.path.isdir(src):
            continue
        graph = crate_graph(src, root)
        for comp in cycles(graph):
            found = True
            print(f"{crate}: module cycle: {', '.join(name(m) for m in comp)}")
            members = set(comp)
            for a in comp:
                for b in sorted(graph[a], key=name):
                    if b in members:
                        extra = f"    ({graph[a][b]})" if why else ""
                        print(f"    {name(a)} -> {name(b)}{extra}")
    return 1 if found else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    sys.exit(main(sys.argv[1:]))
