"""Peak memory of AttentionMatchingLoss forward+backward vs sequence length (CPU, one process per run).

    .venv/bin/python bench/attention_matching_memory.py [--heads 4] [--head-dim 32] [--lengths 1024,2048,4096]
        [--teacher-heads 8]   (target: the teacher's own maps of 8 heads / 4 KV mixed; 0 = mixed Q/K)

Each configuration runs in a fresh subprocess and reports the growth of its peak RSS (ru_maxrss)
after the inputs exist, so allocator noise of earlier runs does not leak in. The child runs with
MALLOC_MMAP_THRESHOLD_=65536: large blocks are mmapped and returned on free, otherwise glibc's
heap keeps freed chunks of the (differently sized, causal) chunks and RSS measures fragmentation. Expectation: with
chunking + checkpointing the extra memory grows linearly in S (doubling S doubles it); with one
chunk of size S (the dense S x S computation) it grows quadratically.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def one_run(s: int, heads: int, head_dim: int, chunk: int, use_checkpoint: bool, teacher_heads: int = 0) -> dict:
    import torch

    from laid.model.families import AttentionPattern
    from trainers.losses import AttentionMatchingLoss

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    kv = max(1, heads // 2)
    mix = None
    if teacher_heads:  # student leaves; the teacher's heads and the mix are fixed (no gradient)
        leaves = [torch.randn(1, h, s, head_dim, generator=g).requires_grad_(True) for h in (heads, kv)]
        leaves += [torch.randn(1, h, s, head_dim, generator=g) for h in (teacher_heads, max(1, teacher_heads // 2))]
        mix = torch.softmax(torch.randn(heads, teacher_heads, generator=g), -1)
    else:
        leaves = [torch.randn(1, h, s, head_dim, generator=g).requires_grad_(True) for h in (heads, kv, heads, kv)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    loss = AttentionMatchingLoss(chunk_size=chunk, use_checkpoint=use_checkpoint)(*leaves, progress=0.5, mix=mix,
                                                                                 student_pattern=AttentionPattern.causal(head_dim),
                                                                                 target_pattern=AttentionPattern.causal(head_dim))
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seq_len": s, "chunk": chunk, "checkpoint": use_checkpoint, "teacher_heads": teacher_heads, "extra_peak_mib": round((peak - base) / 1024, 1),
            "seconds": round(time.time() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--teacher-heads", type=int, default=0, help="teacher query heads of the target (0: mixed Q/K target)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_run(**json.loads(args.child))))
        return
    for s in [int(x) for x in args.lengths.split(",")]:
        for chunk, ckpt in ((args.chunk, True), (args.chunk, False), (s, False)):
            spec = json.dumps(dict(s=s, heads=args.heads, head_dim=args.head_dim, chunk=chunk, use_checkpoint=ckpt,
                                   teacher_heads=args.teacher_heads))
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=True, env=env)
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
