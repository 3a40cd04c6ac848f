#!/bin/bash
export PYTHONPATH=/work/runner4/src OMP_NUM_THREADS=1
cd /work/runs
O=/work/main/.venv/bin/onejump
$O --threads 1 run --model qwen2.5-coder-0.5b --out /work/runs/qwen05 > qwen05-tuned.log 2>&1
$O --threads 1 run --out /work/runs/smollm2b > smollm2b-tuned.log 2>&1
$O --threads 1 sweep --out /work/runs/smollm2b --multipliers 1 --objectives mse --residual-multipliers 2 --variants kl-res-cond-warm,kl-res-warm > smollm2b-ablation.log 2>&1
pkill -CONT -f "extract --model qwen2.5-coder-1.5b"
