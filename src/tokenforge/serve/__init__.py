"""OpenAI-compatible HTTP server over the decoding engine (`tokenforge serve`, docs/serve.md)."""
