#!/usr/bin/env bash
# Gradient checkpointing: peak RSS and step time of training with and without it.
#
# Every case runs in its own process (peak RSS is per process); the two processes of a pair run
# back to back with the same thread count, so they share the machine's load as far as possible.
# - `diffuse bench --only train` (forward, MSE, backward, clipping, AdamW on fixed inputs) of the
#   mnist32 UNet preset at 32 px and of the same network at 64 px;
# - `diffuse train` (the whole trainer: data, AdamW, EMA) of examples/mnist.toml (UNet) and
#   examples/dit-mnist.toml (DiT-S) at 32 px, STEPS steps, step times from metrics.jsonl.
# Peak RSS: the bench's own (VmHWM of the training case) and /usr/bin/time's maximum RSS of the
# whole process. The 1-minute load average before each process is recorded beside it: on a
# shared machine step times move with the load, peak RSS does not.
#
#   cargo build --release && bench/gradient_checkpointing.sh
#   THREADS=2 RUNS=3 STEPS=6 bench/gradient_checkpointing.sh
# Writes bench/results/gradient-checkpointing.md; raw files in $RAW.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/diffuse}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
STEPS=${STEPS:-6}
RAW=${RAW:-target/gradient-checkpointing}
OUT=${OUT:-bench/results/gradient-checkpointing.md}
mkdir -p "$RAW"

# The mnist32 preset's network at 64×64.
cat > "$RAW/mnist32-at-64px.json" <<'EOF'
{"_class_name": "UNet2DModel", "sample_size": 64, "in_channels": 1, "out_channels": 1,
 "block_out_channels": [64, 128, 128], "layers_per_block": 2,
 "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
 "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "norm_num_groups": 32}
EOF

# bench_pair NAME BATCH [MODEL ARGS...]
bench_pair() {
    local name=$1 batch=$2
    shift 2
    for ck in off on; do
        local flag=()
        [ "$ck" = on ] && flag=(--gradient-checkpointing)
        echo "== bench $name batch $batch checkpointing $ck" >&2
        cut -d' ' -f1 /proc/loadavg > "$RAW/bench-$name-b$batch-$ck.load"
        /usr/bin/time -v -o "$RAW/bench-$name-b$batch-$ck.time" \
            "$BIN" --threads "$THREADS" bench "$@" --only train --train-batch "$batch" \
            --runs "$RUNS" --warmup "$WARMUP" "${flag[@]}" \
            --json "$RAW/bench-$name-b$batch-$ck.json" > "$RAW/bench-$name-b$batch-$ck.log" 2>&1
    done
}

# train_pair NAME CONFIG BATCH [--set ...]
train_pair() {
    local name=$1-$3 config=$2 batch=$3
    shift 3
    for ck in off on; do
        local dir="$RAW/train-$name-$ck"
        rm -rf "$dir"
        echo "== train $name checkpointing $ck" >&2
        cut -d' ' -f1 /proc/loadavg > "$RAW/train-$name-$ck.load"
        /usr/bin/time -v -o "$RAW/train-$name-$ck.time" \
            "$BIN" --threads "$THREADS" train --config "$config" --output "$dir" --quiet \
            --max-steps "$STEPS" --set train.checkpoint_every=0 --set train.sample_every=0 \
            --set "train.gradient_checkpointing=$([ "$ck" = on ] && echo true || echo false)" \
            --set data.size=32 --set "data.batch_size=$batch" "$@" > "$RAW/train-$name-$ck.log" 2>&1
        cp "$dir/metrics.jsonl" "$RAW/train-$name-$ck.metrics.jsonl"
        rm -rf "$dir"
    done
}

bench_pair mnist32-32px 64 --preset mnist32
bench_pair mnist32-32px 128 --preset mnist32
bench_pair mnist32-64px 32 --config "$RAW/mnist32-at-64px.json"
train_pair unet examples/mnist.toml 128
train_pair dit examples/dit-mnist.toml 64

python3 - "$RAW" "$THREADS" "$RUNS" "$WARMUP" "$STEPS" > "$OUT" <<'EOF'
import json, os, re, statistics, sys
raw, threads, runs, warmup, steps = sys.argv[1:]

def max_rss_mb(path):
    text = open(path).read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024

def load(path):
    return open(path).read().strip()

def fmt_pair(off, on, digits):
    return f"{off:.{digits}f} | {on:.{digits}f} | {100 * (on / off - 1):+.0f} %"

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"{cpu}; `--threads {threads}`; each case its own process, the pair back to back.\n")
print(f"`diffuse bench --only train` (forward, MSE, backward, clipping, AdamW), median of {runs} steps after {warmup} warm-up:\n")
print("| model | batch | step s, off | on | Δ | peak RSS MiB (bench), off | on | Δ | max RSS MiB (time -v), off | on | Δ | load before, off / on |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
names = sorted({f[6:f.rindex("-")] for f in os.listdir(raw) if f.startswith("bench-") and f.endswith(".json")},
               key=lambda n: (n.split("-b")[0], int(n.rsplit("-b", 1)[1])))
for n in names:
    j = {ck: json.load(open(f"{raw}/bench-{n}-{ck}.json")) for ck in ("off", "on")}
    m = {ck: j[ck]["measurements"][0] for ck in j}
    t = {ck: max_rss_mb(f"{raw}/bench-{n}-{ck}.time") for ck in j}
    model, batch = n.rsplit("-b", 1)
    print(f"| {model} | {batch} | {fmt_pair(m['off']['median_s'], m['on']['median_s'], 2)} | "
          f"{fmt_pair(m['off']['peak_rss_bytes'] / 2**20, m['on']['peak_rss_bytes'] / 2**20, 0)} | "
          f"{fmt_pair(t['off'], t['on'], 0)} | {load(f'{raw}/bench-{n}-off.load')} / {load(f'{raw}/bench-{n}-on.load')} |")

print(f"\n`diffuse train` ({steps} steps, 32 px; step time = median of steps 2–{steps} from metrics.jsonl):\n")
print("| config | batch | step s, off | on | Δ | max RSS MiB (time -v), off | on | Δ | load before, off / on | loss curve |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
configs = {"unet": "examples/mnist.toml", "dit": "examples/dit-mnist.toml"}
pairs = sorted({f[6:f.rindex("-")] for f in os.listdir(raw) if f.startswith("train-") and f.endswith(".metrics.jsonl")})
for n in pairs:
    rows = {}
    for ck in ("off", "on"):
        lines = [json.loads(l) for l in open(f"{raw}/train-{n}-{ck}.metrics.jsonl")]
        times = [b["time_s"] - a["time_s"] for a, b in zip(lines, lines[1:])]
        rows[ck] = (statistics.median(times), [l["loss"] for l in lines], max_rss_mb(f"{raw}/train-{n}-{ck}.time"))
    worst = max(abs(a - b) / abs(a) for a, b in zip(rows["off"][1], rows["on"][1]))
    kind, batch = n.rsplit("-", 1)
    print(f"| {configs[kind]} | {batch} | {fmt_pair(rows['off'][0], rows['on'][0], 2)} | "
          f"{fmt_pair(rows['off'][2], rows['on'][2], 0)} | {load(f'{raw}/train-{n}-off.load')} / {load(f'{raw}/train-{n}-on.load')} | "
          f"{len(rows['off'][1])} losses, max rel. diff {worst:.1e} |")
EOF
cat "$OUT"
