"""Backends: how one forward of a model runs over its KV cache.

- `static` (the fast path): a preallocated KV cache per layer that keeps a path by an index copy
  inside the buffer, and a lean forward for the Llama family (Llama, Qwen2, Qwen3, Mistral,
  Gemma) over the model's own weights; on the CPU the linear layers run through oneDNN with
  prepacked weights, and 16-bit weights keep float32 activations; on CUDA each tree-size bucket
  is captured as a CUDA graph.
- `transformers` (the fallback, any Hugging Face causal LM): the model's own forward with a
  `DynamicCache`.

`get_backend(loaded)` picks `static` where it applies and says once why it does not elsewhere.
"""

from tokenforge.decoding.backends.base import Backend, get_backend, new_backend

__all__ = ["Backend", "get_backend", "new_backend"]
