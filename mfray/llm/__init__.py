"""The model layer: one narrow interface (:mod:`mfray.llm.base`) and its backends.

==================  =======================================================================
``base``            ``LanguageModel`` (``score``, ``generate``), ``ModelError``, ``ScriptedModel``
``hf``              the transformers backend, with ``prefix`` (padding, shared-prefix reuse)
``load``            local weights: SmolLM2's GGUF cache, adapters, the dtype (bf16) choice
``vllm``            the vLLM engine (GPU)
``openai``          OpenAI-compatible HTTP endpoints
``classifier``      a bag-of-words prompt classifier behind the same interface
``retry``           one bounded retry of the prompts that did not fail, as a model
``build``           the factory: the model a ``PolicyConfig`` names (``build_model``)
==================  =======================================================================

Re-exported here: the names most callers need. ``build``, ``classifier``, ``vllm`` and
``openai`` are imported from their modules (they pull in configs, scipy or a server client).
"""

from mfray.llm.base import (
    LanguageModel,
    ModelError,
    ScriptedModel,
    check_options,
    check_sampling,
    model_input,
)
from mfray.llm.hf import HFModel
from mfray.llm.load import (
    BF16_SETTINGS,
    cpu_bf16_native,
    default_gguf,
    load_model,
    model_dtype,
    transformers_dir,
)
from mfray.llm.prefix import pad, pad_multiple
from mfray.llm.retry import PartialAnswer, RetryingModel

__all__ = [
    "BF16_SETTINGS",
    "HFModel",
    "LanguageModel",
    "ModelError",
    "PartialAnswer",
    "RetryingModel",
    "ScriptedModel",
    "check_options",
    "check_sampling",
    "cpu_bf16_native",
    "default_gguf",
    "load_model",
    "model_dtype",
    "model_input",
    "pad",
    "pad_multiple",
    "transformers_dir",
]
