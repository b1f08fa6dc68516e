"""benchmarks/transfer_classification.py runs end to end on its tiny setting and writes its summary."""

from __future__ import annotations

import pytest
import torch

from ..fixtures import load_benchmark

pytestmark = pytest.mark.integration


def test_benchmark_tiny(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONPEFT_SHARED", str(shared))
    bench = load_benchmark("transfer_classification", "bench")
    n = torch.get_num_threads()
    try:
        docs = tmp_path / "benchmarks.md"
        docs.write_text("# Benchmarks\n\n<!-- detection-benchmark:start -->\nDET\n<!-- detection-benchmark:end -->\n")
        bench.main(["--smoke", "--models", "cnn,vit", "--datasets", "flowers,hymenoptera", "--only", "linear_probe",
                    "--threads", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "b.md"),
                    "--update-docs", str(docs)])
    finally:
        torch.set_num_threads(n)
    md = (tmp_path / "b.md").read_text()
    for title in ("EfficientNet-Lite0 on flowers: ", "EfficientNet-Lite0 on hymenoptera: ", "ViT-Tiny/16 on flowers: ",
                  "ViT-Tiny/16 on hymenoptera: "):
        assert f"### {title}" in md
    assert "95% interval of `delta` above 0" in md and "faster with `cache_features: true`" in md
    assert md.count("| linear_probe |") == 4 and "top1_test" in md and "| verdict | t-interval |" in md
    assert "visionpeft/report/bootstrap.py" in md and "(default) |" in md
    # The test split is carved into the run folder, 20% of each class of train, disjoint from train.
    import csv

    split = tmp_path / "runs" / "splits" / "flowers5_128"
    lists = {s: list(csv.DictReader((split / f"{s}.csv").open())) for s in ("train", "val", "test")}
    assert len(lists["test"]) == 400 and len(lists["train"]) == 1600 and len(lists["val"]) == 500
    assert not {r["path"] for r in lists["test"]} & {r["path"] for r in lists["train"]}
    assert all(str(shared) in r["path"] for r in lists["test"])
    ants = tmp_path / "runs" / "splits" / "hymenoptera_data"  # 123 ants, 121 bees: test round(0.2 n) = 25 + 24
    assert [sum(1 for _ in (ants / f"{s}.csv").open()) - 1 for s in ("train", "val", "test")] == [195, 153, 49]
    text = docs.read_text()
    assert "DET" in text and text.count("classification-benchmark:start") == 1
    bench.update_docs(docs, md)  # replacing keeps exactly one classification section
    assert docs.read_text().count("classification-benchmark:start") == 1 and "DET" in docs.read_text()


def test_benchmark_only_rejects_unknown_rows(capsys):
    bench = load_benchmark("transfer_classification", "bench_only")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--only", "lora_r8,dora_r9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--only: unknown rows ['dora_r9']" in err and "'dora_r8'" in err and "'vpt_deep'" in err
