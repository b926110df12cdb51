#!/usr/bin/env bash
# Regenerates the figures and the table of docs/analysis.md (30-60 minutes on 2 CPU cores).
# Usage: bash docs/make_analysis_figures.sh [WORK_FOLDER]   (run from the repository root)
set -euo pipefail
work=${1:-/tmp/coavs-analysis-docs}
figures=docs/figures
mkdir -p "$work" "$figures"

# Five classes: the small model learns them in a few hundred CPU steps (with all ten, its audio classifier is
# still at chance after 300-1000 steps and every prediction is background).
classes=violin,dog,car,bird,drum
# A Co-AVS set whose object area, semantics and instances vary (for A.1 and A.2) ...
coavs synth "$work/coavs_area" --clips 300 --size 64 --frames 3 --classes $classes --area 0.02-0.6 \
    --semantics 1-3 --instances 1-3 --silent-prob 0.05 --eval-silent-prob 0.3 --quiet --overwrite
# ... and a standard one (2 semantics, 1 instance each, 30-40 % of the frame; strong visual prior) for the ablation.
coavs synth "$work/coavs" --clips 200 --size 64 --frames 3 --classes $classes --silent-prob 0.05 \
    --eval-silent-prob 0.5 --quiet --overwrite

# The demo's debias recipe, trained longer, on the varied set.
coavs train configs/demo_debias.yaml --out "$work/run_area" --set data.root="$work/coavs_area" \
    --set 'stages=[{name: main, epochs: 30}]' --set eval.split=test --set eval.every=10 --no-progress

coavs analyze area "$work/run_area" --out "$work/analysis" --quiet
coavs analyze semantics "$work/run_area" --out "$work/analysis" --quiet
coavs analyze queries "$work/run_area" --out "$work/analysis" --quiet --examples 6
coavs analyze queries "$work/run_area" --out "$work/analysis_frame" --quiet --frame 3:0
coavs ablate --data "$work/coavs" --out "$work/ablate" --steps "${STEPS:-1500}" --quiet

cp "$work"/analysis/area.png "$work"/analysis/semantics.png "$work"/analysis/queries_examples.png \
   "$work"/ablate/ablation.png "$work"/ablate/ablation.md "$figures"/
cp "$work"/analysis_frame/queries_*_0.png "$figures"/queries_frame.png
ls -l "$figures"
