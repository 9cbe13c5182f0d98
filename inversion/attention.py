"""Prompt-to-prompt's hook into the UNet: a diffusers attention processor (`unet.set_attn_processor`).

The processor holds no edit state. The edit loop passes its own controller with every UNet call,
`unet(..., cross_attention_kwargs={"controller": controller})`, and the processor hands the
layer's queries, keys and values to it; without a controller it calls the layer's previous
processor (SDPA by default), so a pipeline with these processors installed samples exactly as
before. Two edits running at once on one pipeline therefore never see each other's state, and the
processors can stay installed (installing is idempotent).

The controller decides per layer and step whether it needs explicit attention probabilities
(`softmax(QK^T * scale)`, for cross-attention layers that are edited or whose maps are stored);
everywhere else attention runs through `F.scaled_dot_product_attention`, including the
self-attention replacement, which needs no probabilities: giving the target the source's maps is
`softmax(Q_src K_src^T) V_tgt`, i.e. SDPA with the source's queries and keys.
"""

import threading

import torch
import torch.nn.functional as F


_INSTALL_LOCK = threading.Lock()  # guards set_attn_processor when two edits start at once (holds no edit state)


class P2PAttnProcessor:
    """Routes one attention layer through the edit's controller (when the call carries one)."""

    def __init__(self, name: str, fallback):
        self.name = name  # e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
        self.fallback = fallback  # the processor this one replaced

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, controller=None, **kwargs):
        if controller is None:
            return self.fallback(
                attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, temb=temb, **kwargs
            )
        return attend(attn, self.name, hidden_states, encoder_hidden_states, attention_mask, temb, controller)


def install(unet) -> int:
    """Put a `P2PAttnProcessor` on every attention layer of `unet` (keeping the old one as its fallback).

    Returns the number of cross-attention layers; raises ValueError when there is none.
    """
    with _INSTALL_LOCK:
        processors = unet.attn_processors  # {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor": proc, ...}
        if not all(isinstance(p, P2PAttnProcessor) for p in processors.values()):
            new = {}
            for key, proc in processors.items():
                name = key[: -len(".processor")] if key.endswith(".processor") else key
                new[key] = proc if isinstance(proc, P2PAttnProcessor) else P2PAttnProcessor(name, proc)
            unet.set_attn_processor(new)
        n_cross = sum(1 for key in unet.attn_processors if ".attn2." in key or key.endswith("attn2.processor"))
    if n_cross == 0:
        raise ValueError("this UNet has no cross-attention layers (attn2); prompt-to-prompt edits need them")
    return n_cross


def sdpa(q, k, v, mask, scale):
    """Attention without materialising probabilities. q, k, v: (B, heads, L, d)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)


def probabilities(q, k, mask, scale) -> torch.Tensor:
    """Explicit attention probabilities (B, heads, N, S), softmax in fp32."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


def attend(attn, name, hidden_states, encoder_hidden_states, attention_mask, temb, controller):
    """`AttnProcessor2_0`'s computation, with the attention itself delegated to `controller.attention`."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    is_cross = encoder_hidden_states is not None
    batch, _, _ = hidden_states.shape
    context_len = (encoder_hidden_states if is_cross else hidden_states).shape[1]
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    context = hidden_states if not is_cross else encoder_hidden_states
    if is_cross and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key = attn.to_k(context)
    value = attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, S, d)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    out = controller.attention(name, is_cross, query, key, value, mask, attn.scale)  # (B, heads, N, d)

    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
