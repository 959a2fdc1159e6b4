#!/usr/bin/env bash
# Draw the README's pictures (docs/*.png) from real data: a short learning-rate sweep of the
# tutorial net (3 learning rates x 2 seeds, 3 epochs each), its report, and an evaluation of the
# best job's checkpoint (best by validation accuracy). Run it as `make docs-pictures`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA_ARGS=${DATA_ARGS:-}
SWEEP=outputs/sweeps/docs-pictures/sweep
EVAL=outputs/eval/docs-pictures
rm -rf "$SWEEP" "$EVAL"

# shellcheck disable=SC2086  # DATA_ARGS holds several overrides
"$PY" -m src.train -m $DATA_ARGS model=tutorial 'optimizer.lr=0.01,0.03,0.1' 'seed=1,2' \
    trainer.max_epochs=3 data.augment=flip_crop trainer.enable_progress_bar=false \
    hydra.sweep.dir="$SWEEP"
"$PY" -m src.report "$SWEEP"

best=$("$PY" - "$SWEEP/report/jobs.csv" <<'PYTHON'
import csv, sys
rows = [row for row in csv.DictReader(open(sys.argv[1])) if row["status"] == "finished"]
print(max(rows, key=lambda row: float(row["val/acc_best"]))["job"])
PYTHON
)
# shellcheck disable=SC2086
"$PY" -m src.eval ckpt_path="$SWEEP/$best/checkpoints/best.ckpt" $DATA_ARGS hydra.run.dir="$EVAL"

# The first training batch after augmentation, as the best job logged it to TensorBoard.
"$PY" - "$SWEEP/$best/tensorboard" docs/train_augmented.png <<'PYTHON'
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1], size_guidance={"images": 0}).Reload()
open(sys.argv[2], "wb").write(events.Images("images/train_augmented")[0].encoded_image_string)
PYTHON
cp "$EVAL/confusion.png" docs/confusion.png
cp "$EVAL/predictions.png" docs/predictions.png
cp "$SWEEP/report/acc_vs_optimizer.lr.png" docs/report_accuracy_vs_lr.png
cp "$SWEEP/report/per_class_best.png" docs/report_per_class.png
cp "$SWEEP/report/time_vs_acc.png" docs/report_time_vs_accuracy.png
echo "best job: $best; pictures in docs/, report in $SWEEP/report/report.md"
