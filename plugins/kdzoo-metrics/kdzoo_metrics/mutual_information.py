"""Mutual information between predicted labels, from contingency tables.

Whole-set figures come from one K x K table of counts accumulated over the split (the
plug-in estimator, as ``sklearn.metrics.mutual_info_score`` computes it); the study
authors instead computed MI per training batch and averaged over batches, which is
biased upwards for small batches (few samples spread over K x K cells look
dependent). Both are reported so the reproduction can be compared with the paper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdzoo.api import EvalBatch, Metric
from kdzoo_metrics.predictions import predicted_class
from kdzoo.api import pair_key, role_key, role_logits, role_pairs
from kdzoo_metrics.tally import Tally


def contingency_table(rows: Tensor, columns: Tensor, num_rows: int, num_columns: int) -> Tensor:
    """Counts (int64, ``num_rows x num_columns``) of the label pairs ``(rows[i], columns[i])``."""
    flat = rows.long() * num_columns + columns.long().to(rows.device)
    return torch.bincount(flat, minlength=num_rows * num_columns).view(num_rows, num_columns)


def _entropy_of_counts(counts: Tensor) -> Tensor:
    p = counts[counts > 0].double()
    p = p / p.sum()
    return -(p * p.log()).sum()


def mutual_information(table: Tensor) -> Tensor:
    """MI in nats of the joint distribution given by a contingency table of counts."""
    joint = table.double()
    total = joint.sum()
    if total == 0:
        return joint.new_zeros(())
    joint = joint / total
    rows, columns = joint.sum(dim=1, keepdim=True), joint.sum(dim=0, keepdim=True)
    nonzero = joint > 0
    # Cells with p(a, b) > 0 have p(a) > 0 and p(b) > 0, so the ratio is finite there.
    terms = joint[nonzero] * (joint[nonzero] / (rows * columns).expand_as(joint)[nonzero]).log()
    return terms.sum().clamp_min(0.0)  # rounding can give -1e-17 for independent tables


def normalized_mutual_information(table: Tensor) -> Tensor:
    """MI divided by the arithmetic mean of the two label entropies (sklearn's default
    ``normalized_mutual_info_score(average_method="arithmetic")``, including its limit
    cases: 1 when both labelings are constant, 0 when MI is 0)."""
    used_rows = int((table.sum(dim=1) > 0).sum())
    used_columns = int((table.sum(dim=0) > 0).sum())
    if used_rows == used_columns and used_rows <= 1:
        return table.new_ones((), dtype=torch.float64)
    mi = mutual_information(table)
    if mi <= 0:
        return mi.new_zeros(())
    mean_entropy = (_entropy_of_counts(table.sum(dim=1)) + _entropy_of_counts(table.sum(dim=0))) / 2
    return (mi / mean_entropy).clamp(0.0, 1.0)


class MutualInformation(Metric):
    """MI between two models' predicted labels, and between predictions and true labels.

    Keys, for each pair ``A~B`` of :func:`kdzoo.api.role_pairs`:

    - ``mi/A~B``: MI (nats) of the whole-set K x K contingency table of the two
      predicted classes (:func:`kdzoo_metrics.predictions.predicted_class`: lowest
      class index on tied logits, as for accuracy and fidelity);
    - ``nmi/A~B``: the same normalised by the arithmetic mean of the two entropies
      (sklearn's default normalisation), in [0, 1];
    - ``mi_per_batch/A~B``: the authors' figure: MI of each run of ``per_batch_size``
      consecutive samples, averaged over runs with equal weight (the last, shorter run
      included, as a last smaller batch is in the authors' average). Consecutive
      samples are counted across evaluation batches (placed by ``EvalBatch.offset``),
      so the figure does not depend on the evaluation batch size, nor on how batches
      are spread over processes: ``reduce`` adds up the pieces of a run that several
      ranks saw before taking its MI.

    And per role (ensemble included): ``label_mi/<role>``, MI between the predicted and
    the true labels over the whole set.
    """

    def reset(self) -> None:
        self.tables: dict[str, Tensor] = {}
        self.chunk_tables: dict[int, dict[str, Tensor]] = {}  # open runs by index: pair -> table
        self.chunk_filled: dict[int, int] = {}  # open runs by index: samples seen
        self.chunk_mi = Tally()
        self.chunks_done = 0
        self.seen = 0  # samples so far: the offset when a batch has none

    def _add_table(self, store: dict[str, Tensor], name: str, table: Tensor) -> None:
        if name in store:
            store[name] += table
        else:
            store[name] = table.clone()

    def update(self, batch: EvalBatch) -> None:
        logits = role_logits(batch)
        predictions = {role: predicted_class(value) for role, value in logits.items()}
        num_classes = next(iter(logits.values())).shape[1]
        pairs = role_pairs(batch)

        for left, right in pairs:
            table = contingency_table(predictions[left], predictions[right], num_classes, num_classes)
            self._add_table(self.tables, pair_key("mi", left, right), table)
        for role, predicted in predictions.items():
            targets = batch.targets.to(predicted.device)
            table = contingency_table(predicted, targets, num_classes, num_classes)
            self._add_table(self.tables, role_key("label_mi", role), table)

        # Authors' per-batch figure over runs of per_batch_size consecutive samples; a
        # run can straddle evaluation batches, so feed the batch in slices.
        size = self.params.per_batch_size
        offset = self.seen if batch.offset is None else batch.offset
        start, total = 0, len(batch.targets)
        self.seen += total
        while start < total:
            chunk = (offset + start) // size
            stop = min(total, (chunk + 1) * size - offset)
            tables = self.chunk_tables.setdefault(chunk, {})
            for left, right in pairs:
                table = contingency_table(
                    predictions[left][start:stop], predictions[right][start:stop], num_classes, num_classes
                )
                self._add_table(tables, pair_key("mi_per_batch", left, right), table)
            self.chunk_filled[chunk] = self.chunk_filled.get(chunk, 0) + stop - start
            start = stop
            if self.chunk_filled[chunk] == size:
                self._close_chunk(chunk)

    def _close_chunk(self, chunk: int) -> None:
        for name, table in self.chunk_tables.pop(chunk, {}).items():
            self.chunk_mi.add(name, mutual_information(table))
        del self.chunk_filled[chunk]
        self.chunks_done += 1

    def reduce(self, reducer) -> None:
        """Several processes: sum the tables and the finished runs' MI; add up the pieces
        of runs that straddled two ranks' batches, then close those that are whole."""
        self.tables = reducer.sum(self.tables)
        self.chunk_mi.reduce(reducer)
        self.chunks_done = reducer.sum(self.chunks_done)
        self.seen = reducer.sum(self.seen)
        merged: dict[int, dict[str, Tensor]] = {}
        filled: dict[int, int] = {}
        for tables, counts in reducer.gather((self.chunk_tables, self.chunk_filled)):
            for chunk, count in counts.items():
                filled[chunk] = filled.get(chunk, 0) + count
            for chunk, named in tables.items():
                for name, table in named.items():
                    self._add_table(merged.setdefault(chunk, {}), name, table)
        self.chunk_tables, self.chunk_filled = {}, {}
        for chunk in sorted(filled):
            self.chunk_tables[chunk], self.chunk_filled[chunk] = merged.get(chunk, {}), filled[chunk]
            if filled[chunk] == self.params.per_batch_size:
                self._close_chunk(chunk)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, table in self.tables.items():
            out[name] = float(mutual_information(table))
            if name.startswith("mi/"):
                out["nmi/" + name.removeprefix("mi/")] = float(normalized_mutual_information(table))
        # The open run (the last, shorter one) counts as one more batch, without closing
        # it (compute is read-only).
        chunks = self.chunks_done + len(self.chunk_filled)
        names = set(self.chunk_mi.names()) | {name for tables in self.chunk_tables.values() for name in tables}
        for name in sorted(names):
            total = self.chunk_mi[name].clone() if name in self.chunk_mi else torch.zeros((), dtype=torch.float64)
            for chunk in sorted(self.chunk_tables):
                if name in self.chunk_tables[chunk]:
                    total = total + mutual_information(self.chunk_tables[chunk][name]).to(total.device)
            out[name] = float(total) / chunks
        return out
