"""PyTorch timings of the ops in crates/diffuse-models/examples/kernel_bench.rs (medians, ms).
Run with the pinned venv: tools/fixtures/.venv/bin/python bench/kernels_torch.py [runs] [threads]"""
import sys, time, statistics, torch
import torch.nn.functional as F

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
threads = int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads()
cpu = len(sys.argv) > 3 and sys.argv[3] == "cpu"  # process CPU time (robust on a busy machine)
torch.set_num_threads(threads)

def med(f):
    f()
    t = []
    for _ in range(runs):
        clock = time.process_time if cpu else time.perf_counter
        s = clock(); f(); t.append((clock() - s) * 1e3)
    return statistics.median(t)

print(f"torch {torch.__version__}, {threads} threads")
for b, c, hw in [(32, 64, 32), (32, 128, 16), (8, 128, 8)]:
    x = torch.randn(b, c, hw, hw, requires_grad=True)
    w = (torch.randn(c, c, 3, 3) * 0.05).requires_grad_()
    bias = torch.randn(c, requires_grad=True)
    with torch.no_grad():
        print(f"| conv fwd | {b}x{c}x{hw} | {med(lambda: F.conv2d(x, w, bias, padding=1)):.1f} |")
    y = F.conv2d(x, w, bias, padding=1)
    print(f"| conv bwd | {b}x{c}x{hw} | {med(lambda: torch.autograd.grad(y.sum(), [x, w, bias], retain_graph=True)):.1f} |")
    g = torch.ones(c, requires_grad=True); be = torch.zeros(c, requires_grad=True)
    with torch.no_grad():
        print(f"| GN+SiLU fwd | {b}x{c}x{hw} | {med(lambda: F.silu(F.group_norm(x, 32, g, be))):.1f} |")
    y = F.silu(F.group_norm(x, 32, g, be))
    print(f"| GN+SiLU bwd | {b}x{c}x{hw} | {med(lambda: torch.autograd.grad(y.sum(), [x, g, be], retain_graph=True)):.1f} |")
