"""fastig vs Captum, in one run: 4-layer Longformer-base-shaped random model, 512 tokens, 16 steps.

Each provider runs in its own fresh process (same model seed, same ids), so neither
inherits the other's allocator state, and its peak RSS is its own.

python benchmarks/cpu_quick.py [--tokens 512] [--n-steps 16] [--layers 4] [--repeats 3]
"""

import argparse
import multiprocessing
import resource

import torch

from common import longformer_classifier, machine, median_seconds, random_ids

PROVIDERS = ("fastig", "captum internal_batch_size=2", "captum internal_batch_size=n_steps")


def measure(provider: str, args: argparse.Namespace) -> dict:
    """Runs in a child process: median seconds, peak RSS, attributions and delta of one provider."""
    import fastig
    from fastig.reference import captum_attribute

    model = longformer_classifier(layers=args.layers, window=args.window)
    ids = random_ids(model, args.tokens)
    engine = fastig.Engine(model)
    settings = dict(n_steps=args.n_steps, method="gausslegendre", target=0)
    if provider == "fastig":
        run = lambda: engine.attribute(ids, **settings)  # noqa: E731
    else:
        batch = 2 if provider.endswith("=2") else None
        run = lambda: captum_attribute(engine, ids, internal_batch_size=batch, **settings)  # noqa: E731
    seconds, times = median_seconds(run, args.repeats)
    result = run()
    return {"seconds": seconds, "times": times, "attributions": result.attributions[0],
            "delta": float(result.delta[0]), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    print(f"Longformer {args.layers} layers, hidden 768, 12 heads, window {args.window}, {args.tokens} tokens, "
          f"{args.n_steps} gausslegendre steps; median of {args.repeats} after a warm-up, one process per provider")

    context = multiprocessing.get_context("spawn")
    results = {}
    for provider in PROVIDERS:
        with context.Pool(1) as pool:
            results[provider] = pool.apply(measure, (provider, args))
    ours = results["fastig"]
    best_captum = min(s["seconds"] for p, s in results.items() if p != "fastig")
    token_steps = args.tokens * args.n_steps
    for provider, r in results.items():
        rel = float((ours["attributions"] - r["attributions"]).norm() / r["attributions"].norm())
        print(f"{provider:<38}{r['seconds']:7.2f} s  {token_steps / r['seconds']:7.0f} token-steps/s  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB  delta {r['delta']:+.2e}  rel L2 to fastig {rel:.1e}")
    print(f"fastig speed-up over the fastest Captum setting: {best_captum / ours['seconds']:.2f}x")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
