"""mmedge: take a multimodal (image + text) model to the edge, with proof."""

__version__ = "0.4.0"
