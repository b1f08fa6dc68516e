"""Benchmark scripts each own one marked section of a shared Markdown file (``benchmarks/sections.py``)."""

from __future__ import annotations

from pathlib import Path

from .fixtures import load_benchmark

replace_marked_section = load_benchmark("sections").replace_marked_section

A = ("<!-- a:start -->", "<!-- a:end -->")
B = ("<!-- b:start -->", "<!-- b:end -->")


def test_sections_are_appended_then_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\nintro kept\n")
    replace_marked_section(doc, *A, f"{A[0]}\nfirst a\n{A[1]}")
    replace_marked_section(doc, *B, f"{B[0]}\nfirst b\n{B[1]}\n")
    replace_marked_section(doc, *A, f"{A[0]}\nsecond a\n{A[1]}")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nintro kept\n")
    assert "second a" in text and "first a" not in text and "first b" in text
    assert text.index("second a") < text.index("first b")  # replaced where it was, not re-appended
    assert text.count(A[0]) == 1 and text.count(B[0]) == 1
