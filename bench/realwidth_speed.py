"""LAid / KD step time on real-width, layer-truncated models (CPU), and where LAid's extra time goes.

    PYTHONPATH=. .venv/bin/python bench/realwidth_speed.py [--student 7b] [--layers 1] [--mlp 2048]
        [--images 20] [--text 300] [--repeats 5]

32B-width teacher and 7B- (or 3B-) width student (trainers/realwidth.py: real hidden size, heads,
KV heads, head_dim; `--layers` decoder layers; MLP width `--mlp`, vocabulary 1,024), fp32, one
sequence of `--images` images (4 tokens each) and `--text` text tokens. KD and LAid steps are
interleaved `--repeats` times (medians; the machine is shared, so interleaving keeps the load the
same for both). Then LAid's parts alone: the teacher forward with and without the Q/K capture,
and the LAid loss terms (mixers, Eq. 7 alignment, chunked attention matching) forward + backward
on the captured tensors. Prints a Markdown table (bench/realwidth_speed.md holds a run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainers.realwidth import build_model, distill_step, synthetic_batch, truncated_config


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="7b", choices=("7b", "3b"))
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--mlp", type=int, default=2048)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--text", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from trainers.config import load_config
    from trainers.distill_module import DistillModule, tail_length, teacher_forward
    from trainers.rope_gain import RopeGain

    tc = truncated_config("32b", args.layers, intermediate_size=args.mlp)
    sc = truncated_config(args.student, args.layers, intermediate_size=args.mlp)
    teacher, student = build_model(tc), build_model(sc)
    batch = synthetic_batch(sc, args.images, args.text, 16)
    seq, keep = batch["input_ids"].shape[1], tail_length(batch["labels"])

    steps = {"kd": [], "laid": []}
    distill_step(teacher, student, "kd", batch, False, measure=False)  # warm-up
    for _ in range(args.repeats):
        for method in steps:
            steps[method] += distill_step(teacher, student, method, batch, False, measure=False)["seconds"]
    kd, laid = (statistics.median(steps[m]) for m in ("kd", "laid"))

    last_t, last_s = args.layers - 1, args.layers - 1
    t_plain = _median_time(lambda: teacher_forward(teacher, batch, [last_t], keep, False), args.repeats)
    t_capture = _median_time(lambda: teacher_forward(teacher, batch, [last_t], keep, True), args.repeats)

    cfg = load_config(None, {"method": "laid"})
    gain = RopeGain.for_model(student, [last_s])
    module = DistillModule(student, cfg, [(last_s, last_t)], tc, gain)
    t_out = teacher_forward(teacher, batch, [last_t], keep, True)
    from laid.model.hooks import record_qk, site_name

    with torch.no_grad(), record_qk(student, layers=[last_s], detach=True) as rec:
        student(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=keep, use_cache=False)
    sq0, sk0 = rec.tensors[site_name(last_s, "q_rot")], rec.tensors[site_name(last_s, "k_rot")]
    mask = batch["attention_mask"].bool()
    align = module.align[0]

    from trainers.distill_module import attention_mix, head_energy, layer_patterns, rope_positions

    positions = rope_positions(student, batch) if module.attn_distance == "mrope" else None
    pats = {"student_pattern": layer_patterns(student, [last_s], batch, "student")[last_s], "target_pattern": t_out.patterns[last_t]}

    def loss_terms():  # as DistillModule.forward computes them for one pair (default settings)
        sq, sk = sq0.clone().requires_grad_(True), sk0.clone().requires_grad_(True)
        tq, tk = t_out.q[last_t], t_out.k[last_t]
        mq, mk = align.mixer(tq, tk)
        total = sum(align.terms(sq, sk, mq, mk, mask))
        if module.attention_target == "teacher_heads":
            mix = attention_mix(align.mixer.q.effective(), head_energy(tq, mask), module.attn_mix_power)
            total = total + module.attn_loss(sq, sk, tq, tk, mask, 0.5, mix=mix, positions=positions, **pats)
        else:
            total = total + module.attn_loss(sq, sk, mq, mk, mask, 0.5, positions=positions, **pats)
        total.backward()

    t_loss = _median_time(loss_terms, args.repeats)
    module.release_gain()
    print(f"\n32B-width teacher -> {args.student.upper()}-width student, {args.layers} layer(s), MLP {args.mlp}, "
          f"{seq} tokens, fp32, {args.threads} thread(s), medians of {args.repeats}\n")  # fmt: skip
    print("| what | s |\n|---|---|")
    print(f"| KD step | {kd:.3f} |\n| LAid step | {laid:.3f} |\n| LAid / KD | {laid / kd:.3f} |")
    print(f"| teacher forward, no capture | {t_plain:.3f} |\n| teacher forward, Q/K capture | {t_capture:.3f} |")
    print(f"| LAid loss terms fwd+bwd (mixers, Eq. 7, attention matching) | {t_loss:.3f} |")
    print(f"| LAid step - KD step | {laid - kd:.3f} |")


if __name__ == "__main__":
    main()
