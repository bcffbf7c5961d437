"""Model loading, processor, prompting, pixel cache and hooks: how the workbench touches a model.

    loading      load_model / load_processor / save_folder_atomically (`from_pretrained(local_dir)`)
    processor    the torchvision-free Qwen2.5-VL processor, registered with AutoProcessor
    prompting    Example -> chat prompt -> model inputs (encode_batch)
    pixel_cache  preprocessed images shared across haystacks
    hooks        record_qk: per-head Q/K before and after RoPE (site names layers.{i}.attn.{q,k,q_rot,k_rot})
"""
