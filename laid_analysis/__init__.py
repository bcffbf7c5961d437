"""Mechanistic diagnostics for LAid: what each head reads from the haystack, how its logits depend
on M-RoPE position distance, its exact per-rotary-pair spectrum against the virtual teacher head,
head health, causal ablations, and `laid diagnose` / `laid diagnose-compare`.

Modules (one concept each):
    tokens         image / text / question token masks, the model's M-RoPE position ids, image spans
    key_activation per-haystack answer-query statistics (needle/image mass, needle margin,
                   locality, health) with bootstrap intervals and position-head classes (Figure 4)
    distance       exact chunked attention and logit vs query-key position distance (DistanceProfile)
    pair_spectrum  a_p = scaling E[q_p] conj E[k_p] per rotary pair, virtual teacher heads, fidelity scores
    rope_usage     energy of q and k per rotary pair, M-RoPE axes
    spectra        ABLATION: FFT spectra, reach classes and the low-frequency preservation score
    ablation       head / rotary-band ablations on minimal pairs
    intervals      percentile bootstrap over haystacks
    head_weights   load_head_weights / head_weight_summary for a LAid export's head_weights.nc
    analyse        analyse_model: all statistics of one model in one streaming pass
    diagnose       diagnose(...): files + report for one checkpoint (and its teacher)
    checkpoints    compare_checkpoints(...): several analysed checkpoints side by side
    report, io     figures/HTML and atomic writes; cli registers `laid diagnose` and `laid diagnose-compare`
"""
