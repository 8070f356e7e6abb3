"""Flax modules and the pure functions under them."""

from ambjax.nn.attention import (LAMBDA_INIT_OFFICIAL, DifferentialGraphAttention, aggregate,
                                 banded_aggregate, differential_lambda, edge_attention, lambda_init_for_depth,
                                 segment_softmax)
from ambjax.nn.balance import (ModalityDropout, confusion_matrix, drop_probabilities,
                               modality_f1, modality_keep_mask, per_class_f1, weighted_f1)
from ambjax.nn.block import DifferentialRelationalBlock
from ambjax.nn.encoder import ContextEncoder, DialogueSelfAttention, SigmoidGate, sinusoid_position_encoding
from ambjax.nn.model import AMBDSGDN, ModelConfig, count_parameters, create_model

__all__ = [
    "LAMBDA_INIT_OFFICIAL", "DifferentialGraphAttention", "aggregate", "banded_aggregate",
    "differential_lambda",
    "edge_attention", "lambda_init_for_depth", "segment_softmax", "ModalityDropout",
    "confusion_matrix", "drop_probabilities", "modality_f1", "modality_keep_mask", "per_class_f1",
    "weighted_f1", "DifferentialRelationalBlock", "ContextEncoder", "DialogueSelfAttention",
    "SigmoidGate", "sinusoid_position_encoding", "AMBDSGDN", "ModelConfig", "count_parameters",
    "create_model",
]
