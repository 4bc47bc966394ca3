"""Benchmark of the exported wrapper (modeling_iql.py) on CPU.

Usage:  python bench/inference.py [--bundle DIR] [--threads N]

Without --bundle, a model repository of the card's shape (62 -> [256, 256] -> 25) is created
with random weights. Reported: single-state ``select_action`` latency (p50, p99 over 5,000
calls, list input) and batch throughput of ``policy(tensor)`` + argmax on 100,000 states.
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
    state = [0.1] * policy.state_dim
    for _ in range(200):
        policy.select_action(state)
    lat = []
    for _ in range(5000):
        t0 = time.perf_counter_ns()
        policy.select_action(state)
        lat.append((time.perf_counter_ns() - t0) / 1000)
    lat.sort()
    p50, p99 = statistics.median(lat), lat[int(0.99 * len(lat))]
    # same-run reference: the bare three matrix products on a prepared tensor (no validation,
    # no conversion) - the floor a single-state call can approach on this machine right now
    import torch.nn.functional as F

    layers = [m for m in policy.net if isinstance(m, torch.nn.Linear)]
    x = torch.tensor([state])
    ref = []
    with torch.inference_mode():
        for _ in range(5000):
            t0 = time.perf_counter_ns()
            h = F.linear(
                F.linear(
                    F.linear(x, layers[0].weight, layers[0].bias).relu_(),
                    layers[1].weight,
                    layers[1].bias,
                ).relu_(),
                layers[2].weight,
                layers[2].bias,
            )
            int(h.argmax(1))
            ref.append((time.perf_counter_ns() - t0) / 1000)
    ref_p50 = statistics.median(ref)
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
        f"select_action latency: p50 {p50:.1f} us, p99 {p99:.1f} us (single state, list input); "
        f"bare 3-layer reference in the same run: p50 {ref_p50:.1f} us"
    )
    print(
        f"batch throughput: {rate:,.0f} states/s (100,000 states, median of 5; threads={torch.get_num_threads()})"
    )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "inference.json").write_text(
        json.dumps(
            {
                "p50_us": p50,
                "p99_us": p99,
                "bare_reference_p50_us": ref_p50,
                "states_per_second": rate,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
