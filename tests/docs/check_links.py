#!/usr/bin/env python3
"""Every relative link in the documentation resolves inside the repository.

Usage: check_links.py REPOSITORY_ROOT
Checks README.md and docs/*.md: each relative link (inline, image or
reference definition, outside code) must name a file or directory in the
repository, never a place outside it, and a #fragment must name a heading of
the target Markdown file (GitHub's anchors). Links with a scheme (https:,
mailto:) are left alone. Exit status 1 lists every broken link.
"""

import glob
import os
import re
import sys
import urllib.parse

INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(?:.|\n)*?\1")


def prose(text, blank_code=True):
    """The text with fenced code blocks emptied (their lines kept, so line
    numbers stay) and, with blank_code, code spans blanked: links in code
    are examples, not links."""
    lines, fenced = [], None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and (fenced is None or fence.group(1) == fenced):
            fenced = fence.group(1) if fenced is None else None
            lines.append("")
        else:
            lines.append("" if fenced else line)
    out = "\n".join(lines)
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), out) if blank_code else out


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path, cache={}):  # noqa: B006 - a per-run cache
    if path not in cache:
        found, seen = set(), {}
        with open(path, encoding="utf-8") as f:
            for line in prose(f.read(), blank_code=False).splitlines():  # `code` counts in an anchor
                m = HEADING.match(line)
                if m:
                    base = slug(m.group(1))
                    count = seen.get(base, 0)
                    seen[base] = count + 1
                    found.add(base if count == 0 else f"{base}-{count}")
        cache[path] = found
    return cache[path]


def check_file(root, path):
    """(problems, number of links) of one file; a link's text may wrap over lines."""
    with open(path, encoding="utf-8") as f:
        text = prose(f.read())
    links = [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in INLINE.finditer(text)]
    for number, line in enumerate(text.splitlines(), 1):
        ref = REFERENCE.match(line)
        if ref:
            links.append((number, ref.group(1)))
    problems = []
    for number, target in sorted(links):
        problem = check_target(root, path, target)
        if problem:
            problems.append(f"{os.path.relpath(path, root)}:{number}: {target}: {problem}")
    return problems, len(links)


def check_target(root, path, target):
    parsed = urllib.parse.urlsplit(target)
    if parsed.scheme or target.startswith("//"):
        return None
    file_part, fragment = urllib.parse.unquote(parsed.path), urllib.parse.unquote(parsed.fragment)
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
    if os.path.commonpath([root, os.path.realpath(resolved)]) != root:
        return "points outside the repository"
    if not os.path.exists(resolved):
        return "no such file in the repository"
    if fragment and resolved.endswith(".md") and os.path.isfile(resolved):
        if fragment not in anchors(resolved):
            return f"{os.path.relpath(resolved, root)} has no heading with the anchor #{fragment}"
    return None


def main(root):
    root = os.path.realpath(root)
    files = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    problems, links = [], 0
    for path in files:
        found, count = check_file(root, path)
        problems += found
        links += count
    for problem in problems:
        print(problem)
    print(f"{len(files)} files, {links} links: {len(problems)} broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
