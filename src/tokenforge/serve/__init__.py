"""OpenAI-compatible HTTP server over the decoding engine (`tokenforge serve`, docs/serve.md)."""

MAX_BODY_BYTES = 4 * 2**20  # the default request body limit (a larger body gets 413, unread)
