#!/usr/bin/env python3
"""Markdown table of tools/eval/sampler_table.sh's eval-table.jsonl (stdlib only)."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| sampler | steps | classifier-FID ↓ | class accuracy ↑ | IS-style ↑ |")
print("|---|---:|---:|---:|---:|")
for r in rows:
    e = r["eval"]
    fid = "n/a" if e.get("fid") is None else f"{e['fid']:.1f}"
    print(f"| {r['sampler']} | {r['steps']} | {fid} | {e['class_accuracy']:.3f} | "
          f"{e['is_mean']:.2f} ± {e['is_std']:.2f} |")
