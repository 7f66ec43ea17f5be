#!/usr/bin/python3
"""check_links.py - every relative link in the project's Markdown resolves.

Checks README.md, docs/*.md and tests/README.md: each [text](target) that is
not an absolute URL must name an existing file or directory (relative to the
Markdown file), and a #fragment must name an anchor of the target Markdown
file (or of the file itself for a bare "#fragment").  Anchors are what GitHub
makes of headings (lower case, punctuation dropped, spaces to "-", "-1",
"-2" for repeats) plus explicit <a id="..."> / <a name="..."> tags.  Links
inside code blocks and code spans are not links and are skipped.

  python3 tests/check_links.py      # prints each broken link; exit 1 if any

CTest runs it as unit_doc_links.
"""
import os
import re
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT = re.compile(r"""<a\s+(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target); the target may be followed by a "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files():
    files = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "tests", "README.md")]
    docs = os.path.join(ROOT, "docs")
    if os.path.isdir(docs):
        files += sorted(os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))
    return [f for f in files if os.path.exists(f)]


def lines_outside_code(text):
    """Yields (line number, line) for lines outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def slug(heading):
    """GitHub's anchor for a heading's text (github-slugger)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "")
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in "-_" or ch == " ":
            out.append(ch)
        elif cat[0] in "LMN":
            out.append(ch)
        # punctuation and symbols are dropped
    return "".join(out).replace(" ", "-")


_anchors = {}


def anchors(path):
    if path not in _anchors:
        found, seen = set(), {}
        for _, line in lines_outside_code(open(path, encoding="utf-8").read()):
            for a in EXPLICIT.findall(CODE_SPAN.sub("", line)):
                found.add(a)
            m = HEADING.match(line)
            if m:
                s = slug(m.group(2))
                if s in seen:
                    seen[s] += 1
                    found.add("%s-%d" % (s, seen[s]))
                else:
                    seen[s] = 0
                    found.add(s)
        _anchors[path] = found
    return _anchors[path]


def check(path):
    problems = []
    rel = os.path.relpath(path, ROOT)
    for n, line in lines_outside_code(open(path, encoding="utf-8").read()):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto: ...
            file_part, _, fragment = target.partition("#")
            dest = path if not file_part else os.path.normpath(
                os.path.join(os.path.dirname(path), file_part))
            if not dest.startswith(ROOT + os.sep) and dest != ROOT:
                problems.append("%s:%d: %s: points outside the repository" % (rel, n, target))
                continue
            if not os.path.exists(dest):
                problems.append("%s:%d: %s: no such file" % (rel, n, target))
                continue
            if fragment and dest.endswith(".md") and fragment not in anchors(dest):
                problems.append("%s:%d: %s: no anchor \"%s\" in %s" %
                                (rel, n, target, fragment, os.path.relpath(dest, ROOT)))
    return problems


def main():
    files = markdown_files()
    problems = [p for f in files for p in check(f)]
    for p in problems:
        print(p)
    print("check_links.py: %d files, %s" %
          (len(files), "%d broken links" % len(problems) if problems else "every link resolves"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
