"""ambjax: AMB-DSGDN for multimodal emotion recognition in conversation, in pure JAX.

The public surface, re-exported here (details in each subpackage):

- data: `load_features`, `make_synthetic`, `write_pickle`, `DialogueDataset`, `DataFormatError`
- graphs: `dialogue_edges`, `relation_matrix`, `GraphBatcher`, `build_batch`, `DialogueBatch`
  (typed pytree: `Nodes`, `EdgeSet`, `DialogueLayout`), `Budget`, `stack_for_devices`
- nn: `DifferentialGraphAttention`, `DifferentialRelationalBlock`, `ContextEncoder`,
  `ModalityBalancing`, `ModalityDropout`, `drop_probabilities`, `segment_softmax`,
  `AMBDSGDN`, `ModelConfig`, `create_model`, `count_parameters`, `DialogueModel` (protocol)
- losses and metrics: `amb_loss`, `masked_nll`, `confusion_matrix`, `weighted_f1`, `macro_f1`,
  `modality_f1`, `classification_report`
- train: `make_train_step`, `make_eval_step`, `compile_steps`, `create_train_state`,
  `create_optimizer`, `train_and_evaluate`, `ExperimentConfig` (the config tree), `override`
- `ambjax.convert`: the bridge to the authors' PyTorch release.
"""

from ambjax import convert
from ambjax.data import (DataFormatError, DialogueDataset, load_features, make_synthetic,
                         write_pickle)
from ambjax.graphs import (Budget, DialogueBatch, DialogueLayout, EdgeSet, GraphBatcher, Nodes,
                           build_batch, dialogue_edges, relation_matrix, stack_for_devices)
from ambjax.losses import amb_loss, masked_nll
from ambjax.metrics import (classification_report, confusion_matrix, macro_f1, modality_f1,
                            weighted_f1)
from ambjax.nn import (AMBDSGDN, ContextEncoder, DialogueModel, DifferentialGraphAttention,
                       DifferentialRelationalBlock, ModalityBalancing, ModalityDropout,
                       ModelConfig, count_parameters, create_model, drop_probabilities,
                       segment_softmax)
from ambjax.train import (ExperimentConfig, compile_steps, create_optimizer, create_train_state,
                          make_eval_step, make_train_step, override, train_and_evaluate)

__version__ = "0.1.0"

__all__ = [
    "convert", "DataFormatError", "DialogueDataset", "load_features", "make_synthetic",
    "write_pickle", "Budget", "DialogueBatch", "DialogueLayout", "EdgeSet", "GraphBatcher",
    "Nodes", "build_batch", "dialogue_edges", "relation_matrix", "stack_for_devices",
    "amb_loss", "masked_nll", "classification_report", "confusion_matrix", "macro_f1",
    "modality_f1", "weighted_f1", "AMBDSGDN", "ContextEncoder", "DialogueModel",
    "DifferentialGraphAttention", "DifferentialRelationalBlock", "ModalityBalancing",
    "ModalityDropout", "ModelConfig", "count_parameters", "create_model", "drop_probabilities",
    "segment_softmax", "ExperimentConfig", "compile_steps", "create_optimizer",
    "create_train_state", "make_eval_step", "make_train_step", "override",
    "train_and_evaluate", "__version__",
]
