"""ambjax: AMB-DSGDN for multimodal emotion recognition in conversation, in pure JAX."""

__version__ = "0.1.0"
