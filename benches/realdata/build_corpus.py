#!/usr/bin/env python3
"""Builds the real-data search corpus from what this machine has: the English man pages
(/usr/share/man/man1-8, raw troff with the markup stripped) and the docstrings of Python's
standard library (modules, classes, functions, methods). Each text is one paragraph of
40-600 characters. Deterministic for a given machine: sources are read in sorted order,
texts deduplicated, and the order, the held-out queries and the cut to size are chosen by a
SHA-1 of the text.

    python3 benches/realdata/build_corpus.py OUT_DIR [N_CORPUS] [N_QUERIES]

writes OUT_DIR/corpus.txt and OUT_DIR/queries.txt (one text per line) and prints where the
texts came from. Default 100000 corpus texts and 1000 queries (not in the corpus).
"""
import gzip
import hashlib
import importlib
import inspect
import os
import re
import sys
import warnings

MIN, MAX = 40, 600


def clean(text):
    text = re.sub(r"\s+", " ", text).strip()
    return text if MIN <= len(text) <= MAX else None


ESCAPES = [
    (re.compile(r"\\f[BIRPC]|\\f\(..|\\f\[[^\]]*\]"), ""),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), " "),
    (re.compile(r"\\[&|^~0:%]"), ""),
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\e"), "\\\\"),
    (re.compile(r"\\s[-+]?\d"), ""),
    (re.compile(r'\\".*'), ""),
    (re.compile(r"\\\*\(..|\\\*\[[^\]]*\]|\\\*."), ""),
]


def man_paragraphs(path):
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError):
        return
    para = []
    for line in lines:
        if line.startswith((".", "'")):
            macro = line[1:3].strip()
            # Paragraph and section breaks end a paragraph; font macros carry text.
            if macro in ("B", "I", "BI", "BR", "IB", "IR", "RB", "RI"):
                words = line.split(None, 1)
                if len(words) > 1:
                    para.append(words[1].replace('"', ""))
                continue
            if para:
                yield " ".join(para)
                para = []
            continue
        if not line.strip():
            if para:
                yield " ".join(para)
                para = []
            continue
        for pat, rep in ESCAPES:
            line = pat.sub(rep, line)
        para.append(line)
    if para:
        yield " ".join(para)


def man_texts():
    for section in range(1, 9):
        d = f"/usr/share/man/man{section}"
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith(".gz"):
                for p in man_paragraphs(os.path.join(d, name)):
                    yield p


def doc_texts():
    warnings.simplefilter("ignore")
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in skip:
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        objs = [mod]
        for attr in sorted(dir(mod)):
            o = getattr(mod, attr, None)
            objs.append(o)
            if inspect.isclass(o):
                objs.extend(getattr(o, a, None) for a in sorted(vars(o)))
        for o in objs:
            d = inspect.getdoc(o) if o is not None else None
            if d:
                yield from d.split("\n\n")


def main():
    out = sys.argv[1]
    n_corpus = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    n_queries = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000
    seen = {}
    counts = {}
    for source, texts in (("man pages", man_texts()), ("python docstrings", doc_texts())):
        counts[source] = 0
        for t in texts:
            t = clean(t)
            if t and t not in seen:
                seen[t] = hashlib.sha1(t.encode()).hexdigest()
                counts[source] += 1
    ordered = sorted(seen, key=seen.get)
    if len(ordered) < n_corpus + n_queries:
        sys.exit(f"only {len(ordered)} distinct texts here; asked for {n_corpus} + {n_queries}")
    queries, corpus = ordered[:n_queries], ordered[n_queries : n_queries + n_corpus]
    os.makedirs(out, exist_ok=True)
    for name, texts in (("corpus.txt", corpus), ("queries.txt", queries)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in texts)
    lengths = sorted(len(t) for t in corpus)
    print(
        f"{len(ordered)} distinct texts ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
        f"wrote {len(corpus)} corpus texts (median {lengths[len(lengths) // 2]} chars) and "
        f"{len(queries)} queries to {out}"
    )


if __name__ == "__main__":
    main()
