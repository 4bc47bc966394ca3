"""Benchmark of the exported wrapper (modeling_iql.py) on CPU.

Usage:  python bench/inference.py [--bundle DIR] [--threads N]

Without --bundle, a model repository of the card's shape (62 -> [256, 256] -> 25) is created
with random weights. Reported: single-state ``select_action`` latency (list input; p50 as the
median of 5 rounds of 2,000 calls, the best round, p99 over all calls), a bare three-layer
reference timed in interleaved rounds (this VM's timings drift with host load), and throughput of ``policy(tensor)`` + argmax on 100,000 states.
Also the peak memory of one plain ``policy(x)`` call on 1,000,000 states (no
``inference_mode`` by the caller: the wrapper must not track gradients; issue 14), measured
in a fresh process as the growth of its peak resident memory.
Targets (issue 6): p50 <= 100 microseconds; >= 300k states/second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROUNDS = 5
#: a child process: peak RSS growth of one policy(x) call on 1e6 states, in MB
_PEAK_CHILD = """
import resource, sys, torch
from pathlib import Path
from sepsisrl.release.modeling_iql import load_policy
policy = load_policy(Path(sys.argv[1]))
x = torch.randn(1_000_000, policy.state_dim, generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y = policy(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(round((after - before) / 1024, 1), bool(y.requires_grad))
"""


def make_bundle(folder: Path) -> None:
    from safetensors.torch import save_file

    from sepsisrl.release.modeling_iql import IQLPolicy

    torch.manual_seed(0)
    net = IQLPolicy(62, 25, [256, 256], {})
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors")
    )
    (folder / "config.json").write_text(
        json.dumps({"state_dim": 62, "n_actions": 25, "hidden_sizes": [256, 256]})
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sepsisrl.release.modeling_iql import load_policy

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.bundle
        if folder is None:
            folder = Path(tmp)
            make_bundle(folder)
        policy = load_policy(folder)
        import subprocess
        import sys

        child = subprocess.run(
            [sys.executable, "-c", _PEAK_CHILD, str(folder)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peak_mb, grad = child.stdout.split()
    state = [0.1] * policy.state_dim
    # same-run reference: the bare three matrix products on a prepared tensor (no validation,
    # no conversion) - the floor a single-state call can approach on this machine right now.
    # Rounds alternate between the wrapper and the reference so both see the same host load.
    import torch.nn.functional as F

    layers = [m for m in policy.net if isinstance(m, torch.nn.Linear)]
    x = torch.tensor([state])

    def bare() -> int:
        with torch.inference_mode():
            h = F.linear(x, layers[0].weight, layers[0].bias).relu_()
            h = F.linear(h, layers[1].weight, layers[1].bias).relu_()
            return int(F.linear(h, layers[2].weight, layers[2].bias).argmax(1))

    def round_p50(fn, n: int = 2000) -> tuple[float, list[float]]:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            lat.append((time.perf_counter_ns() - t0) / 1000)
        return statistics.median(lat), lat

    for _ in range(300):
        policy.select_action(state)
        bare()
    wrapper_rounds, ref_rounds, all_lat = [], [], []
    for _ in range(ROUNDS):
        p50_round, lat = round_p50(lambda: policy.select_action(state))
        wrapper_rounds.append(p50_round)
        all_lat += lat
        ref_rounds.append(round_p50(bare)[0])
    all_lat.sort()
    p50, p99 = statistics.median(wrapper_rounds), all_lat[int(0.99 * len(all_lat))]
    best, ref_p50 = min(wrapper_rounds), statistics.median(ref_rounds)
    batch = torch.randn(100_000, policy.state_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        policy(batch[:1000]).argmax(1)
        rates = []
        for _ in range(5):
            t0 = time.perf_counter()
            policy(batch).argmax(1)
            rates.append(len(batch) / (time.perf_counter() - t0))
    rate = statistics.median(rates)
    print(
        f"select_action latency: p50 {p50:.1f} us (median of {ROUNDS} rounds x 2,000 calls; "
        f"best round {best:.1f} us), p99 {p99:.1f} us (single state, list input); "
        f"bare 3-layer reference, interleaved rounds: p50 {ref_p50:.1f} us"
    )
    print(
        f"batch throughput: {rate:,.0f} states/s (100,000 states, median of 5; threads={torch.get_num_threads()})"
    )
    print(
        f"policy(x) on 1,000,000 states: peak memory growth {float(peak_mb):,.0f} MB "
        f"(result tracks gradients: {grad})"
    )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "inference.json").write_text(
        json.dumps(
            {
                "p50_us": p50,
                "p99_us": p99,
                "best_round_p50_us": best,
                "round_p50s_us": wrapper_rounds,
                "bare_reference_p50_us": ref_p50,
                "states_per_second": rate,
                "peak_mb_policy_1e6_states": float(peak_mb),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
