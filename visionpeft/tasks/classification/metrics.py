"""Classification metrics accumulated over batches (and summed over DDP ranks): loss, top-1/top-5, per class."""

from __future__ import annotations

import torch

from ..distributed import all_reduce_sum

__all__ = ["Accumulator"]


class Accumulator:
    """Running sums for top-1, top-k, loss and per-class accuracy.

    Args:
        num_classes: number of classes (per-class accuracy and the top-k cap).
        k: the second accuracy reported (``top5``; capped at ``num_classes``).
        keep_examples: also keep every example's label and top-1 prediction, in loader order (:attr:`labels`,
            :attr:`predictions`): the per-example test results the compare report's bootstrap pairs. This
            process's examples only (a DDP rank sees its shard).
    """

    def __init__(self, num_classes: int, k: int = 5, keep_examples: bool = False) -> None:
        self.num_classes = num_classes
        self.k = min(k, num_classes)
        self.keep_examples = keep_examples
        self.labels: list[int] = []
        self.predictions: list[int] = []
        # [n, correct@1, correct@k, loss_sum] in float64 so large datasets sum exactly.
        self.totals = torch.zeros(4, dtype=torch.float64)
        self.class_correct = torch.zeros(num_classes, dtype=torch.float64)
        self.class_total = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss_sum: float = 0.0) -> None:
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        topk = logits.topk(self.k, dim=1).indices
        hit1 = topk[:, 0] == target
        hitk = (topk == target[:, None]).any(dim=1)
        if self.keep_examples:
            self.labels += target.tolist()
            self.predictions += topk[:, 0].tolist()
        self.totals += torch.tensor([len(target), hit1.sum().item(), hitk.sum().item(), loss_sum],
                                    dtype=torch.float64)
        self.class_total += torch.bincount(target, minlength=self.num_classes).double()
        self.class_correct += torch.bincount(target[hit1], minlength=self.num_classes).double()

    def compute(self, class_names: tuple[str, ...] | None = None) -> dict[str, float]:
        """``top1``, ``top5``, ``loss``, ``mean_class_acc`` and ``acc/<class>`` (summed over ranks)."""
        packed = all_reduce_sum(torch.cat([self.totals, self.class_correct, self.class_total]))
        totals, rest = packed[:4], packed[4:]
        correct, total = rest[: self.num_classes], rest[self.num_classes:]
        n = max(totals[0].item(), 1.0)
        out = {"top1": totals[1].item() / n, "top5": totals[2].item() / n, "loss": totals[3].item() / n}
        per_class = torch.where(total > 0, correct / total.clamp(min=1), torch.nan)
        present = per_class[total > 0]
        out["mean_class_acc"] = present.mean().item() if len(present) else float("nan")
        names = class_names or tuple(str(i) for i in range(self.num_classes))
        for name, acc in zip(names, per_class.tolist()):
            out[f"acc/{name}"] = acc
        return out
