"""ambjax: AMB-DSGDN for multimodal emotion recognition in conversation, in pure JAX.

The public surface, re-exported here (details in each subpackage):

- data: `load_features`, `make_synthetic`, `write_pickle`, `DialogueDataset`, `DataFormatError`
- graphs: `dialogue_edges`, `relation_matrix`, `GraphBatcher`, `build_batch`, `DialogueBatch`,
  `Budget`, `stack_for_devices`
- nn: `DifferentialGraphAttention`, `DifferentialRelationalBlock`, `ContextEncoder`,
  `ModalityDropout`, `drop_probabilities`, `modality_f1`, `weighted_f1`, `confusion_matrix`,
  `segment_softmax`,
  `AMBDSGDN`, `ModelConfig`, `create_model`, `count_parameters`
- losses and metrics: `amb_loss`, `masked_nll`, `classification_report`
- train: `make_train_step`, `make_eval_step`, `compile_steps`, `create_train_state`,
  `create_optimizer`, `train_and_evaluate`, `TrainConfig`, `make_config`
- `ambjax.convert`: the bridge to the authors' PyTorch release.
"""

from ambjax import convert
from ambjax.data import (DataFormatError, DialogueDataset, load_features, make_synthetic,
                         write_pickle)
from ambjax.graphs import (Budget, DialogueBatch, GraphBatcher, build_batch, dialogue_edges,
                           relation_matrix, stack_for_devices)
from ambjax.losses import amb_loss, masked_nll
from ambjax.metrics import classification_report
from ambjax.nn import (AMBDSGDN, ContextEncoder, DifferentialGraphAttention,
                       DifferentialRelationalBlock, ModalityDropout, ModelConfig,
                       confusion_matrix, count_parameters, create_model, drop_probabilities,
                       modality_f1, segment_softmax, weighted_f1)
from ambjax.train import (TrainConfig, compile_steps, create_optimizer, create_train_state,
                          make_config, make_eval_step, make_train_step, train_and_evaluate)

__version__ = "0.1.0"

__all__ = [
    "convert", "DataFormatError", "DialogueDataset", "load_features", "make_synthetic",
    "write_pickle", "Budget", "DialogueBatch", "GraphBatcher", "build_batch", "dialogue_edges",
    "relation_matrix", "stack_for_devices", "amb_loss", "masked_nll", "classification_report",
    "AMBDSGDN", "ContextEncoder", "DifferentialGraphAttention", "DifferentialRelationalBlock",
    "ModalityDropout", "ModelConfig", "confusion_matrix", "count_parameters", "create_model",
    "drop_probabilities", "modality_f1", "segment_softmax", "weighted_f1", "TrainConfig", "compile_steps",
    "create_optimizer", "create_train_state", "make_config", "make_eval_step",
    "make_train_step", "train_and_evaluate", "__version__",
]
