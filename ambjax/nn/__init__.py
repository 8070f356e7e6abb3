"""Flax modules and the pure functions under them."""

from ambjax.nn.attention import (LAMBDA_INIT_OFFICIAL, DifferentialGraphAttention,
                                 attention_weights, banded_edge_attention,
                                 differential_lambda, edge_attention, edge_share,
                                 lambda_init_for_depth)
from ambjax.nn.balance import (ModalityBalancing, ModalityDropout, drop_probabilities,
                               modality_keep_mask)
from ambjax.nn.block import DifferentialRelationalBlock
from ambjax.nn.encoder import (ContextEncoder, DialogueSelfAttention, SigmoidGate,
                               sinusoid_position_encoding)
from ambjax.nn.kernels import (aggregate, band_softmax, banded_aggregate, dense_aggregate,
                               segment_aggregate, segment_softmax)
from ambjax.nn.model import AMBDSGDN, ModelConfig, count_parameters, create_model
from ambjax.nn.protocol import DialogueModel, ModelOutput
from ambjax.nn.stack import GRAPH_AXES, stacked_call

__all__ = [
    "LAMBDA_INIT_OFFICIAL", "DifferentialGraphAttention", "attention_weights",
    "banded_edge_attention", "differential_lambda", "edge_attention", "edge_share",
    "lambda_init_for_depth", "ModalityBalancing", "ModalityDropout", "drop_probabilities",
    "modality_keep_mask", "DifferentialRelationalBlock", "ContextEncoder",
    "DialogueSelfAttention", "SigmoidGate", "sinusoid_position_encoding", "aggregate",
    "band_softmax", "banded_aggregate", "dense_aggregate", "segment_aggregate",
    "segment_softmax", "AMBDSGDN", "ModelConfig", "count_parameters", "create_model",
    "DialogueModel", "ModelOutput", "GRAPH_AXES", "stacked_call",
]
