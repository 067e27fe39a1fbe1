"""sentence-transformers baseline for the enricher benchmark.

Same sentences (the golden fixture's, cycled), same batch sizes, same rule for how long each
size runs as `agentwire-enricher bench`, so the two tables can be set side by side.
Run by `cargo xtask bench-enricher`, which installs sentence-transformers into a throwaway
venv under ~/.cache/agentwire; also runs on the GPU machine, where it is preinstalled.
"""

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all)")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--min-batches", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-chars", type=int, default=None,
                        help="leave out sentences longer than this (as the burn bench's --max-chars)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(args.fixture) as f:
        sentences = [c["text"] for c in json.load(f)["cases"]]
    if args.max_chars is not None:
        sentences = [s for s in sentences if len(s) <= args.max_chars]
    model = SentenceTransformer(args.model_dir, device=args.device)
    model.max_seq_length = 256

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    cursor = 0

    def next_batch(size):
        nonlocal cursor
        batch = [sentences[(cursor + i) % len(sentences)] for i in range(size)]
        cursor = (cursor + size) % len(sentences)
        return batch

    rows = []
    with torch.inference_mode():
        for size in [int(s) for s in args.batch_sizes.split(",")]:
            model.encode(next_batch(size), batch_size=size, normalize_embeddings=True)
            sync()
            latencies = []
            started = time.perf_counter()
            while len(latencies) < args.min_batches or time.perf_counter() - started < args.min_seconds:
                batch = next_batch(size)
                t = time.perf_counter()
                model.encode(batch, batch_size=size, normalize_embeddings=True, convert_to_numpy=True)
                sync()
                latencies.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - started
            latencies.sort()
            pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
            rows.append({
                "batch": size,
                "batches": len(latencies),
                "sentences_per_s": len(latencies) * size / elapsed,
                "p50_ms": pick(0.50),
                "p99_ms": pick(0.99),
            })
    name = f"sentence-transformers torch {torch.__version__} {args.device} threads={torch.get_num_threads()}"
    print("| backend | batch | sentences/s | p50 ms | p99 ms | batches |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {name} | {r['batch']} | {r['sentences_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['batches']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": name, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
