"""Building and loading models: a spec's example, Hugging Face folders, timm names, Python factories."""
from .build import build_example, make_inputs, select_outputs
from .load import load_model
from .loader import ModelLoader
from .save import save_model

__all__ = ["build_example", "make_inputs", "select_outputs", "load_model", "ModelLoader", "save_model"]
