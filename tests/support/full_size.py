"""unet_config dicts of full-size models, as ``comfy/model_detection.py`` reads them from the real checkpoints
(used on the meta device: module counts in tests, the memory table in benchmarks/bench_memory.py)."""

SD15 = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True, 'legacy': False,
        'adm_in_channels': None, 'in_channels': 4, 'model_channels': 320, 'num_res_blocks': [2, 2, 2, 2],
        'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0], 'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1,
        'use_linear_in_transformer': False, 'context_dim': 768, 'num_heads': 8,
        'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        'use_temporal_attention': False, 'use_temporal_resblock': False}
SD21 = {**SD15, 'use_linear_in_transformer': True, 'context_dim': 1024, 'num_head_channels': 64}
SD21.pop('num_heads')
SDXL = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True, 'legacy': False,
        'num_classes': 'sequential', 'adm_in_channels': 2816, 'in_channels': 4, 'model_channels': 320,
        'num_res_blocks': [2, 2, 2], 'transformer_depth': [0, 0, 2, 2, 10, 10], 'channel_mult': [1, 2, 4],
        'transformer_depth_middle': 10, 'use_linear_in_transformer': True, 'context_dim': 2048, 'num_head_channels': 64,
        'transformer_depth_output': [0, 0, 0, 2, 2, 2, 10, 10, 10],
        'use_temporal_attention': False, 'use_temporal_resblock': False}
FLUX_DEV = {'image_model': 'flux', 'in_channels': 16, 'out_channels': 16, 'vec_in_dim': 768, 'context_in_dim': 4096,
            'hidden_size': 3072, 'mlp_ratio': 4.0, 'num_heads': 24, 'depth': 19, 'depth_single_blocks': 38,
            'axes_dim': [16, 56, 56], 'theta': 10000, 'patch_size': 2, 'qkv_bias': True, 'guidance_embed': True,
            'txt_ids_dims': []}


def sd3(depth, attn2_layers=(), qk_norm=None, pos_embed_max_size=192):
    cfg = {'in_channels': 16, 'patch_size': 2, 'out_channels': 16, 'depth': depth, 'input_size': None,
           'adm_in_channels': 2048, 'num_patches': pos_embed_max_size ** 2, 'pos_embed_max_size': pos_embed_max_size,
           'context_embedder_config': {'target': 'torch.nn.Linear',
                                       'params': {'in_features': 4096, 'out_features': 64 * depth}},
           'pos_embed_scaling_factor': None, 'x_block_self_attn_layers': list(attn2_layers)}
    if qk_norm:
        cfg['qk_norm'] = qk_norm
    return cfg


# The newer families, as comfy/model_detection.py detect_unet_config gives them for the released checkpoints
QWEN_IMAGE = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}  # the rest: the model's defaults
Z_IMAGE_TURBO = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
                 "n_layers": 30, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48],
                 "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
                 "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32}
LUMINA2 = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304,
           "n_layers": 26, "qk_norm": True, "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32],
           "axes_lens": [300, 512, 512], "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0}
HIDREAM_I1 = {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
              "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
              "llama_layers": list(range(32)) + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
              "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16,
              "patch_size": 2, "text_emb_dim": 2048}
CHROMA1_HD = {"image_model": "chroma", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
              "out_channels": 64, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 64, "hidden_size": 3072,
              "context_in_dim": 4096, "patch_size": 2, "vec_in_dim": None, "depth": 19, "depth_single_blocks": 38,
              "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5}
_WAN = {"image_model": "wan2.1", "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "text_dim": 4096, "model_type": "t2v"}
WAN21_14B = {**_WAN, "dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "in_dim": 16, "out_dim": 16}
WAN21_1_3B = {**_WAN, "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, "in_dim": 16, "out_dim": 16}
WAN22_TI2V_5B = {**_WAN, "dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30, "in_dim": 48, "out_dim": 48}
WAN22_I2V_A14B = {**WAN21_14B, "in_dim": 36}  # detected as WAN21_T2V: only its input channels tell
FLUX2_DEV = {"image_model": "flux2", "axes_dim": [32, 32, 32, 32], "num_heads": 48, "mlp_ratio": 3.0, "theta": 2000,
             "out_channels": 128, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False,
             "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3],
             "in_channels": 128, "hidden_size": 6144, "context_in_dim": 15360, "patch_size": 1, "vec_in_dim": None,
             "depth": 8, "depth_single_blocks": 48, "guidance_embed": True, "yak_mlp": False, "txt_norm": False}
HUNYUAN_IMAGE21 = {"image_model": "hunyuan_video", "in_channels": 64, "patch_size": [1, 1], "out_channels": 64,
                   "vec_in_dim": None, "axes_dim": [64, 64], "meanflow": False, "context_in_dim": 3584,
                   "hidden_size": 3584, "mlp_ratio": 4.0, "num_heads": 28, "depth": 20, "depth_single_blocks": 40,
                   "theta": 256, "qkv_bias": True, "byt5": True, "guidance_embed": False,
                   "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False}
