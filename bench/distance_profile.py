"""Time and peak memory of the per-head distance profile: chunked (laid_analysis) vs eager attention.

    .venv/bin/python bench/distance_profile.py [--model DIR] [--sizes 10,50,100,150] [--lengths 2048,4096,8192]

Part 1, the tiny teacher on haystacks of growing size (one forward + the profile of all layers):
- chunked: SDPA forward, record_qk streams each layer's post-RoPE Q/K into DistanceProfile
  (auto chunk from the 256 MiB budget, and a fixed chunk of 64 queries);
- eager: eager attention with output_attentions=True (every layer's (B, H, S, S) weights are
  returned), profile accumulated from those full matrices.
Part 2, the profile alone at longer sequences (random Q/K, 8 heads / 4 KV, head_dim 32, one layer):
chunked distance_sums vs the dense computation (one (H, S, S) softmax).
Every measurement runs in a fresh subprocess and reports the peak growth of resident memory during
the measured block (sampled from /proc/self/statm; ru_maxrss deltas read 0 below the import-time
high-water mark), with MALLOC_MMAP_THRESHOLD_=65536 so freed large blocks leave RSS (otherwise
glibc keeps them and RSS measures fragmentation). Results go to
bench/results/distance_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


class PeakRSS:
    """Peak resident memory growth during a block, sampled every 1 ms from /proc/self/statm.

    ru_maxrss is a high-water mark of the whole process: imports and model loading set it, and a
    later measurement below that mark reads as 0. Sampling the current RSS measures the block."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def extra_mib(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def _measure(work) -> tuple[float, float]:
    """(seconds of a first run without the sampler, peak MiB of a second run with it): the
    sampling thread would slow the timed run; the second run also sees warm lazy initialisation."""
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        work()
        seconds = round(time.perf_counter() - t0, 3)
        with PeakRSS() as mem:
            work()
    return seconds, mem.extra_mib


def _eager_profile(attentions, real):
    """Reference path: accumulate sums by distance from full (B, H, S, S) weights."""
    import torch

    sums = []
    for w in attentions:  # one (B, H, S, S) per layer
        S = w.shape[-1]
        dist = torch.arange(S)[:, None] - torch.arange(S)[None, :]
        valid = (dist >= 0) & real[0][:, None] & real[0][None, :]
        acc = torch.zeros(w.shape[1], S, dtype=torch.float64)
        acc.index_add_(1, dist[valid], w[0][:, valid].double())
        sums.append(acc)
    return sums


def run_model(model_dir: str, size: int, method: str) -> dict:
    import numpy as np
    import torch

    from laid.data.render import sample_image
    from laid.model.families import family_of
    from laid.model.loading import load_model, load_processor
    from laid.model.prompting import Example, encode_batch
    from laid_analysis import tokens
    from laid_analysis.distance import DistanceProfile
    from laid.model.hooks import record_qk, text_decoder

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    processor = load_processor(model_dir)
    batch = encode_batch(processor, [Example([sample_image(rng)[0] for _ in range(size)], "Is there a red circle?")])
    model = load_model(model_dir, device="cpu", attn_implementation="eager" if method == "eager" else "sdpa")
    real = tokens.real_token_mask(batch)

    def work():
        if method == "eager":
            out = model(**batch, output_attentions=True, use_cache=False, logits_to_keep=1)
            _eager_profile(out.attentions, real)
        else:
            chunk = None if method == "chunked-auto" else int(method.split("-")[1])
            profile, pending = DistanceProfile(chunk_size=chunk), {}
            _, layers = text_decoder(model)

            def consume(name, x):
                layer = int(name.split(".")[1])
                if name.endswith("q_rot"):
                    pending[layer] = x
                else:
                    profile.update(layer, pending.pop(layer), x, layers[layer].self_attn.scaling, real,
                                   pattern=family_of(model).attention_pattern(model, layer, batch))

            with record_qk(model, callback=consume):
                model(**batch, use_cache=False, logits_to_keep=1)
            profile.to_dataset()

    seconds, extra = _measure(work)
    return {"part": "model", "haystack_size": size, "seq_len": int(batch["input_ids"].shape[1]), "method": method,
            "seconds": seconds, "extra_peak_mib": extra}


def run_kernel(seq_len: int, method: str) -> dict:
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, seq_len, 32, generator=g), torch.randn(4, seq_len, 32, generator=g)
    seconds, extra = _measure(lambda: _kernel(q, k, method))
    return {"part": "kernel", "seq_len": seq_len, "method": method, "seconds": seconds, "extra_peak_mib": extra}


def _kernel(q, k, method: str) -> None:
    import torch

    from laid.model.families import AttentionPattern
    from laid_analysis.distance import distance_sums

    seq_len = q.shape[1]
    if method == "dense":
        kk = k.repeat_interleave(2, dim=0)
        logits = q @ kk.transpose(1, 2) * 32**-0.5  # (H, S, S)
        dist = torch.arange(seq_len)[:, None] - torch.arange(seq_len)[None, :]
        w = torch.softmax(logits.masked_fill(dist < 0, float("-inf")), dim=-1)
        acc = torch.zeros(8, seq_len, dtype=torch.float64)
        acc.index_add_(1, dist[dist >= 0], w[:, dist >= 0].double())
    else:
        distance_sums(q, k, 32**-0.5, chunk_size=int(method.split("-")[1]), pattern=AttentionPattern.causal(32))


def _child(args: list[str]) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], key: str, methods: list[str]) -> list[str]:
    extra = key != "seq_len"  # show the token count beside the haystack size
    lines = [f"| {key} | " + ("seq_len | " if extra else "") + " | ".join(f"{m} s | {m} MiB" for m in methods) + " |",
             "|---|" + ("---|" if extra else "") + "---|---|" * len(methods)]
    for value in sorted({r[key] for r in rows}):
        by = {r["method"]: r for r in rows if r[key] == value}
        cells = " | ".join(f"{by[m]['seconds']} | {by[m]['extra_peak_mib']}" if m in by else "- | -" for m in methods)
        seq = f"{next(iter(by.values()))['seq_len']} | " if extra else ""
        lines.append(f"| {value} | {seq}{cells} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: a random-init tiny-32b built in a temp dir)")
    ap.add_argument("--sizes", default="10,50,100,150")
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        print(json.dumps(run_model(*rest) if kind == "model" else run_kernel(*rest)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from laid.zoo.build import build_random_folder
            from laid.zoo.configs import load_zoo_config

            model_dir = str(build_random_folder(load_zoo_config(REPO / "configs/zoo/tiny-32b.yaml"), Path(tmp) / "tiny-32b"))
        model_methods = ["chunked-auto", "chunked-64", "eager"]
        rows = [_child(["model", model_dir, int(n), m]) for n in args.sizes.split(",") for m in model_methods]
    kernel_methods = ["chunked-256", "dense"]
    krows = [_child(["kernel", int(s), m]) for s in args.lengths.split(",") for m in kernel_methods]
    for r in rows + krows:
        print(json.dumps(r), file=sys.stderr)

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU threads visible, torch threads 1",
            "model": args.model or "random-init tiny-32b (4 layers, 8 heads / 4 KV, head_dim 32)",
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    (RESULTS / "distance_profile.json").write_text(json.dumps({"meta": meta, "model": rows, "kernel": krows}, indent=1))
    md = [
        "# Distance profile: chunked (laid_analysis) vs eager attention",
        "",
        f"Machine: {meta['machine']}; model: {meta['model']}; {meta['created']}. Produced by `bench/distance_profile.py`.",
        "Seconds = wall time of one forward + the profile of every layer (part 2: the profile alone); MiB = peak",
        "growth of resident memory during that block, sampled every 1 ms (fresh subprocess per cell).",
        "Wall times on a shared 2-core machine are noisy.",
        "",
        "## Tiny teacher, growing haystacks",
        "",
        *_table(rows, "haystack_size", model_methods),
        "",
        "## Profile alone, one layer of random Q/K (8 heads / 4 KV, head_dim 32)",
        "",
        *_table(krows, "seq_len", kernel_methods),
        "",
        "Eager memory grows as layers x heads x S^2 (every layer's weights are returned); the chunked",
        "profile holds heads x chunk x S for one layer at a time. At the real 32B teacher's 150-image",
        "context (S = 53,653, 40 heads) one layer's fp32 weights alone would be 40 x 53,653^2 x 4 B = 460 GB;",
        "the chunked profile with 64-query chunks needs 40 x 64 x 53,653 x 4 B = 0.55 GB per temporary.",
    ]
    (RESULTS / "distance_profile.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
