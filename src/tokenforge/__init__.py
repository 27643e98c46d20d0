"""tokenforge: every decoding method behind one engine, on any Hugging Face causal LM."""

from tokenforge.decoding.api import Generation, generate, make_drafter
from tokenforge.errors import TokenforgeError
from tokenforge.models.load import LoadedModel, load_model

__version__ = "0.1.0"
__all__ = ["Generation", "LoadedModel", "TokenforgeError", "generate", "load_model", "make_drafter"]
