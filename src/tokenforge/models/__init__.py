from tokenforge.models.load import DEMO_MODELS, LoadedModel, load_model

__all__ = ["DEMO_MODELS", "LoadedModel", "load_model"]
