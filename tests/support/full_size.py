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
