"""Keep generated sections of a Markdown file up to date (benchmark scripts share ``docs/benchmarks.md``)."""

from __future__ import annotations

from pathlib import Path


def replace_marked_section(path: Path, start: str, end: str, section: str) -> None:
    """Replace the text between the ``start`` and ``end`` markers (both included in ``section``).

    Appends the section when the markers are absent; everything outside the markers is kept, so several
    scripts can each own one section of the same file.
    """
    section = section.strip("\n")
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(text: str, start: str, end: str, md: Path | None = None, docs: Path | None = None,
            json_path: Path | None = None, payload: object = None) -> None:
    """Print a benchmark's section and write it where asked: Markdown (``md``), its marked section of ``docs``
    and ``payload`` as JSON (``json_path``)."""
    import json

    print(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2))
    if md is not None:
        md.write_text(text + "\n")
    if docs is not None:
        replace_marked_section(docs, start, end, text)
