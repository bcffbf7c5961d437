"""One-command GPU check of the distillation step on real-width, layer-truncated models (bf16).

    bash bench/gpu_check.sh               # on one H100 / H200: <= 8 min, nothing downloaded
    bash bench/gpu_check.sh --dry-run     # CPU, tiny sizes, fp32: exercises every part (tests)

Writes bench/results/gpu_check.md (or --out) with four parts:
1. LAid / KD step time (target <= 1.10) on 32B-width teacher and 7B-width student, both truncated
   to `--layers` decoder layers, real MLP widths and vocabulary, one 20-image-length sequence
   (synthetic tokens; the vision tower is 1 small block, see trainers/realwidth.py). LAid's extra
   cost (teacher Q/K capture, mixers, alignment, attention matching at one layer pair) does not
   grow with depth, so the ratio is also projected to the full 64 / 28 layers by scaling the
   KD step with the model FLOPs.
2. MFU of the distillation step: model FLOPs (6 x student params x S + 2 x teacher params x S +
   attention) / time / the chip's dense bf16 peak.
3. At 150-image length (53k tokens): the chunked attention matching (forward + backward) and the
   chunked distance profile, memory at S/2 and S (linear: ratio ~2) and time against one SDPA
   forward of that layer (target <= 2x).
4. Peak GPU memory of each step against `laid plan` (same shapes, no sharding, no checkpointing).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainers.realwidth import REAL_TEXT, build_model, distill_step, synthetic_batch, truncated_config, write_config_folder  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (vendor spec)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _mem_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def _mem_peak(device, base: int) -> float | None:
    return (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None


def step_flops(tc, sc, seq: int) -> float:
    """Model FLOPs of one distillation step: student fwd+bwd, teacher fwd (matmuls + causal attention)."""

    def layer(text):
        h, i, kv = text.hidden_size, text.intermediate_size, text.num_key_value_heads * 128
        return 2 * h * h + 2 * h * kv + 3 * h * i, text.num_attention_heads * 128  # params, attention width

    (ps, ws), (pt, wt) = layer(sc.text_config), layer(tc.text_config)
    ls, lt = sc.text_config.num_hidden_layers, tc.text_config.num_hidden_layers
    attn = lambda w: 2 * seq * seq * w  # QK^T and AV, causal half of 2 x 2 S^2 w
    return 3 * ls * (2 * ps * seq + attn(ws)) + lt * (2 * pt * seq + attn(wt))


def part_step(args, device, dtype_teacher) -> dict:
    tc = truncated_config(args.teacher, args.layers, args.vocab, args.mlp)
    sc = truncated_config(args.student, args.layers, args.vocab, args.mlp)
    teacher = build_model(tc, dtype_teacher, device)
    student = build_model(sc, torch.float32, device)
    batch = synthetic_batch(sc, 20, args.seq - 20 * 6 - 16, 16, device=device)
    seq = batch["input_ids"].shape[1]
    out = {"seq_len": seq, "layers": args.layers, "teacher": args.teacher, "student": args.student}
    for method in ("kd", "laid"):
        base = _mem_reset(device)
        r = distill_step(teacher, student, method, batch, bf16=args.bf16, repeats=args.repeats + 1, measure=False)
        out[method] = {"s_per_step": statistics.median(r["seconds"][1:]), "peak_gib": _mem_peak(device, base)}
    t_kd, t_laid = out["kd"]["s_per_step"], out["laid"]["s_per_step"]
    flops = step_flops(tc, sc, seq)
    full = step_flops(truncated_config(args.teacher, REAL_TEXT[args.teacher]["num_hidden_layers"], args.vocab, args.mlp),
                      truncated_config(args.student, REAL_TEXT[args.student]["num_hidden_layers"], args.vocab, args.mlp), seq)  # fmt: skip
    out.update(ratio=t_laid / t_kd, ratio_full_depth=1 + (t_laid - t_kd) / (t_kd * full / flops), flops=flops)
    peak = _peak(device)
    out["mfu_laid"] = flops / t_laid / peak if peak else None
    out["mfu_kd"] = flops / t_kd / peak if peak else None
    with tempfile.TemporaryDirectory() as d:
        from trainers.plan import plan

        est = plan(write_config_folder(tc, Path(d) / "t"), write_config_folder(sc, Path(d) / "s"), seq_len=seq,
                   max_response=17, sharding="none", gradient_checkpointing=False,
                   precision="bf16" if args.bf16 else "fp32").memory  # fmt: skip
    out["plan_gib"] = sum(v for k, v in est.items() if k != "overhead")
    return out


def _timed(fn, device, repeats: int) -> tuple[float, float | None]:
    fn()  # warm-up (kernels, allocator)
    base = _mem_reset(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _mem_peak(device, base)


def part_long(args, device) -> dict:
    """Attention matching (fwd+bwd) and the distance profile at S/2 and S vs one SDPA forward."""
    from laid.model.families import AttentionPattern
    from laid_analysis.distance import distance_sums
    from trainers.losses import AttentionMatchingLoss

    heads, kv, d = REAL_TEXT["7b"]["num_attention_heads"], REAL_TEXT["7b"]["num_key_value_heads"], 128
    t_heads, t_kv = REAL_TEXT["32b"]["num_attention_heads"], REAL_TEXT["32b"]["num_key_value_heads"]
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    causal = AttentionPattern.causal(d)  # Qwen2.5-VL's layers: plain causal at head_dim ** -0.5
    rows = []
    for s in (args.long // 2, args.long):
        g = torch.Generator(device=device).manual_seed(0)
        mk = lambda h, grad: torch.randn(1, h, s, d, device=device, dtype=dtype, generator=g).requires_grad_(grad)
        # the recipe's default target: the teacher's own per-head maps (40 / 8 heads), mixed per student head
        sq, sk, tq, tk = mk(heads, True), mk(kv, True), mk(t_heads, False), mk(t_kv, False)
        mix = torch.softmax(torch.randn(heads, t_heads, device=device, generator=g), -1)  # (Hs, Ht), rows sum to 1
        loss = AttentionMatchingLoss(chunk_size=args.chunk)

        def am():
            loss(sq, sk, tq, tk, None, 0.5, mix=mix, student_pattern=causal, target_pattern=causal).backward()

        v = mk(kv, False)
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(sq.detach(), sk.detach(), v, is_causal=True, enable_gqa=True)
        prof = lambda: distance_sums(sq.detach()[0], sk.detach()[0], d**-0.5, chunk_size=args.chunk, pattern=causal)
        rep = 1 if device.type == "cpu" else 3
        row = {"seq_len": s}
        for name, fn in (("sdpa_forward", sdpa), ("attention_matching", am), ("distance_profile", prof)):
            with torch.no_grad() if name != "attention_matching" else torch.enable_grad():
                t, m = _timed(fn, device, rep)
            row[name] = {"s": t, "peak_gib": m}
        rows.append(row)
    return {"rows": rows}


def render(res: dict) -> str:
    st, lg, env = res["step"], res["long"]["rows"], res["env"]
    f = lambda x, p=3: "n/a" if x is None else f"{x:.{p}f}"
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
    lines = [
        "# GPU check: LAid distillation step on real-width, layer-truncated Qwen2.5-VL models",
        "",
        f"`bash bench/gpu_check.sh{' --dry-run' if res['dry_run'] else ''}` on {env['device']} (torch {env['torch']}, "
        f"{'bf16 autocast' if res['bf16'] else 'fp32'}), {env['date']}." + (" DRY RUN: CPU, tiny sizes; numbers are not GPU results." if res["dry_run"] else ""),
        "",
        f"## 1. Step time, {st['teacher'].upper()}-width teacher -> {st['student'].upper()}-width student, {st['layers']} layer(s) each, {st['seq_len']} tokens",
        "",
        "| method | s / step | peak GiB |", "|---|---|---|",
        f"| KD | {f(st['kd']['s_per_step'])} | {f(st['kd']['peak_gib'], 1)} |",
        f"| LAid | {f(st['laid']['s_per_step'])} | {f(st['laid']['peak_gib'], 1)} |",
        "",
        f"LAid / KD = {st['ratio']:.3f} truncated; projected to the full depth (KD step scaled by model FLOPs, "
        f"LAid's extra cost depth-independent): {st['ratio_full_depth']:.3f} (target <= 1.10).",
        "",
        f"## 2. MFU: {st['flops'] / 1e12:.2f} TFLOP per step; LAid {pct(st['mfu_laid'])}, KD {pct(st['mfu_kd'])} (target >= 40%)",
        "",
        "## 3. Long sequences (one layer: student 28 / 4 heads, teacher maps 40 / 8 heads, head_dim 128)",
        "",
        "| S | SDPA fwd s | attn matching fwd+bwd s (x SDPA) | GiB | distance profile s (x SDPA) | GiB |", "|---|---|---|---|---|---|",
    ]
    for r in lg:
        sd = r["sdpa_forward"]["s"]
        lines.append(f"| {r['seq_len']} | {f(sd)} | {f(r['attention_matching']['s'])} ({r['attention_matching']['s'] / sd:.2f}x) | "
                     f"{f(r['attention_matching']['peak_gib'], 2)} | {f(r['distance_profile']['s'])} ({r['distance_profile']['s'] / sd:.2f}x) | "
                     f"{f(r['distance_profile']['peak_gib'], 2)} |")  # fmt: skip
    a, b = lg[0]["attention_matching"]["peak_gib"], lg[1]["attention_matching"]["peak_gib"]
    lines += ["", f"Memory ratio S / (S/2) of attention matching: {f(b / a if a and b else None, 2)} (linear: ~2; quadratic: ~4). Target: time <= 2x SDPA.",
              "", "## 4. Peak memory vs `laid plan`", "",
              f"plan (no overhead line) {f(st['plan_gib'], 2)} GiB; measured LAid step {f(st['laid']['peak_gib'], 2)} GiB "
              f"(ratio {f(st['laid']['peak_gib'] / st['plan_gib'] if st['laid']['peak_gib'] else None, 2)}; within 25% is the goal).",
              "", "Raw numbers:", "", "```json", json.dumps({k: v for k, v in res.items() if k != "env"}, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, fp32: exercise every part (tests)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_check.md"))
    args = ap.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)
        args.layers, args.vocab, args.mlp, args.seq, args.repeats, args.bf16 = 1, 256, 256, 160, 1, False
        args.teacher, args.student = "3b", "3b"  # the 32B / 7B widths take ~3 s per step on one CPU core
        args.long, args.chunk = 512, 128
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        args.layers, args.vocab, args.mlp, args.seq, args.repeats, args.bf16 = 2, 152064, None, 7401, 5, True
        args.teacher, args.student = "32b", "7b"
        args.long, args.chunk = 53000, 256
    t0 = time.time()
    res = {"dry_run": dry, "bf16": args.bf16}
    res["step"] = part_step(args, device, torch.bfloat16 if args.bf16 else torch.float32)
    print(f"step done ({time.time() - t0:.0f} s)", flush=True)
    res["long"] = part_long(args, device)
    print(f"long sequences done ({time.time() - t0:.0f} s)", flush=True)
    res["env"] = {"device": torch.cuda.get_device_name() if not dry else f"CPU ({platform.machine()})",
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "seconds": round(time.time() - t0, 1)}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(res))
    print(f"wrote {out} ({res['env']['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
