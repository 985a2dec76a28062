"""`TriptychLM`: any Triptych model reference as an lm-eval language model ("triptych").

    import lm_eval
    from train.harness import TriptychLM
    lm = TriptychLM("runs/gpt")                        # a workdir, converted or HF dir, Hub id
    lm_eval.simple_evaluate(model=lm, tasks=["triptych_choice"], task_manager=task_manager())

It answers lm-eval's three request types as the `hf` backend does on the same weights
(lm_eval/models/huggingface.py): `loglikelihood` gives (logprob, is_greedy), with lm-eval's own
context/continuation split (`TemplateLM`: trailing spaces of the context move to the
continuation; a causal pair is encoded whole and split at the context's length);
`loglikelihood_rolling` scores lm-eval's disjoint windows of max_length tokens; `generate_until`
decodes with the KV cache, greedily or sampled, and cuts the text at the first `until` string
(an encoder-decoder generates at most max_gen_toks tokens; the hf backend's seq2seq limit also
counts the padded length of the batch's contexts, so a text that meets no `until` may run on
there).
Decoders score causally and encoder-decoders as the `hf` backend's `backend="seq2seq"`: the
context goes to the encoder with the tokenizer's special tokens (T5 `x </s>`, BART
`<s> x </s>`), the continuation is scored on the decoder after the start token. Tokens come
from the checkpoint's own tokenizer (data/tokenizers.py).
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm

from data.rows import special_frame
from data.tokenizers import Tokenizer
from models.errors import UserError
from train import partitioning, reference
from train.harness.batching import DEFAULT_BATCH_SIZE, Scorer
from train.tasks.loading import tokenizer_of

DEFAULT_MAX_GEN_TOKS = 256  # the hf backend's


class HarnessError(UserError):
    """A model or request the harness cannot run; one line that says why."""


def _int(value, default: int) -> int:
    """lm-eval passes model arguments as strings (`--model_args batch_size=8`) or None."""
    if value in (None, "", "auto") or str(value).startswith("auto"):
        return default
    return int(value)


def check_model(where: str, config) -> None:
    """HarnessError unless `config` is a decoder or an encoder-decoder with an LM head."""
    if config.family == "encoder":
        raise HarnessError(
            f"{where} is an encoder-only model ({config.name}): lm-eval scores text with a "
            "language-model head, which needs a decoder or an encoder-decoder"
        )
    if config.head != "lm":
        raise HarnessError(
            f"{where} has a {config.head!r} head, not a language-model head (head='lm'); "
            "lm-eval scores text with next-token probabilities"
        )


@register_model("triptych")
class TriptychLM(TemplateLM):
    """A Triptych decoder or encoder-decoder, scored on the device mesh.

    Args:
      pretrained: a model reference (train/reference.py): a training workdir, a converted or
        Hugging Face directory, a PEFT adapter, or a Hub id.
      batch_size: rows per program; rounded up to a multiple of the mesh's batch shards.
      max_length: the longest input in tokens; default the model's position table.
      max_gen_toks: new tokens a `generate_until` request may take when it does not say.
      dtype: the compute dtype (float32, as the exported model computes).
      mesh: a `Mesh`, or {data, fsdp, tensor} sizes (train/partitioning.py); default every
        device on data.
      rules: the logical axis rules (default train/partitioning.py's).
      seed: the key of sampled generation.
      step: a workdir's checkpoint: a number, 'latest' or 'best'.
      model: in place of `pretrained`, `(config, params, tokenizer)` already in memory.
    """

    def __init__(self, pretrained: str | None = None, batch_size=None, max_length=None,
                 max_gen_toks=None, dtype: str = "float32", mesh=None, rules=None, seed=1234,
                 step=None, model=None, **unused):  # fmt: skip
        super().__init__()
        del unused  # lm-eval's generic arguments (device, max_batch_size) mean nothing here
        if model is None:
            if not pretrained:
                raise HarnessError("give the model: pretrained=REF (a workdir, directory or id)")
            ref = reference.resolve(pretrained, "--model", step=step)
            config, params = ref.load()
            check_model(ref.where, config)
            tokenizer = tokenizer_of(ref)
            self.name = ref.where
        else:
            config, params, tokenizer = model
            check_model(config.name, config)
            self.name = config.name
        self.tokenizer: Tokenizer = tokenizer
        self.backend = "seq2seq" if config.family == "encoder_decoder" else "causal"
        self._max_gen_toks = _int(max_gen_toks, DEFAULT_MAX_GEN_TOKS)
        if not isinstance(mesh, Mesh):
            mesh = partitioning.make_mesh(mesh if isinstance(mesh, dict) else {"data": -1})
        self.scorer = Scorer(
            config.replace(dtype=dtype),
            params,
            mesh=mesh,
            rules=rules or partitioning.DEFAULT_RULES,
            batch_size=_int(batch_size, DEFAULT_BATCH_SIZE),
            max_length=_int(max_length, config.max_positions),
            pad_id=tokenizer.pad_id or 0,
            decoder_start_id=tokenizer.decoder_start_id,
        )
        self._rng = jax.random.key(_int(seed, 1234))
        self._generated = 0

    # Tokens --------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context or a rolling window starts from: BOS, else EOS (as hf)."""
        bos = self.tokenizer.bos_id
        return bos if bos is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.scorer.batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.name.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None,
                   **kwargs) -> list[int]:  # fmt: skip
        """Token ids of `string`; with special tokens (the default) framed as the tokenizer's
        family frames one sequence (GPT-2 adds none), unless the text already starts with the
        prefix token."""
        framed = True if add_special_tokens is None else bool(add_special_tokens)
        if add_special_tokens is None and string.startswith(self.tok_decode([self.prefix_token_id],
                                                                            False)):  # fmt: skip
            framed = False
        ids = [int(i) for i in self.tokenizer.encode(string)]
        if framed and self.tokenizer.family != "gpt":
            begin, _, end = special_frame(self.tokenizer)
            ids = [*begin, *ids, *end]
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        tokens = [tokens] if isinstance(tokens, int) else tokens
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    @staticmethod
    def _quiet(disable_tqdm: bool) -> bool:
        """Progress bars from process 0 only (every process computes every request)."""
        return disable_tqdm or jax.process_index() != 0

    # Scoring -------------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """[(strings, context ids, continuation ids)] -> [(logprob, is_greedy)], in order;
        requests sharing a model input share its row (train/harness/rows.py)."""
        for _, context, continuation in requests:
            if not context or not continuation or len(continuation) > self.max_length:
                raise HarnessError(
                    f"a request with {len(context)} context and {len(continuation)} "
                    f"continuation tokens; both must be non-empty, the continuation at most "
                    f"max_length={self.max_length}"
                )
        bar = tqdm(total=len(requests), disable=self._quiet(disable_tqdm), desc="loglikelihood")
        results = self.scorer.score([(c, x) for _, c, x in requests], progress=bar.update)
        bar.close()
        for (strings, _, _), answer in zip(requests, results):
            if strings is not None:  # rolling windows are cached per document instead
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """One log-likelihood per document: the sum over lm-eval's disjoint windows of at most
        max_length tokens, the first conditioned on the prefix token."""
        windows, owners = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            pieces = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(lm_utils.make_disjoint_window, pieces):
                windows.append((None, context, continuation))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # Generation ----------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context until an `until` string, EOS or max_gen_toks."""
        args = [req.args for req in requests]
        collator = Collator(
            args,
            sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
            group_by="gen_kwargs",
            group_fn=lambda a: a[1],
        )
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        results = []
        bar = tqdm(total=len(args), disable=self._quiet(disable_tqdm), desc="generate_until")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            texts = self._generate(list(contexts), all_kwargs[0], eos)
            for context, text in zip(contexts, texts):
                self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), text)
            results.extend(texts)
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(results)

    def _generate(self, contexts: list[str], gen_kwargs: dict, eos: str) -> list[str]:
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        new_tokens = int(kwargs.pop("max_gen_toks"))
        room = self.max_length - (new_tokens if self.backend == "causal" else 0)
        if room <= 0:
            raise HarnessError(
                f"max_gen_toks={new_tokens} leaves no room for the context in "
                f"max_length={self.max_length}; lower max_gen_toks"
            )
        sampled = bool(kwargs.get("do_sample"))
        self._generated += 1
        tokens = self.scorer.generate(
            [self.tok_encode(c, left_truncate_len=room) for c in contexts],
            max_new_tokens=new_tokens,
            eos_id=self.eot_token_id,
            rng=jax.random.fold_in(self._rng, self._generated),
            temperature=float(kwargs.get("temperature") or 1.0) if sampled else 0.0,
            top_k=int(kwargs.get("top_k") or 0) if sampled else 0,
            top_p=float(kwargs.get("top_p") or 1.0) if sampled else 1.0,
        )
        return [
            postprocess_generated_text(self.tok_decode(row), stop=until, think_end_token=None)
            for row in tokens.tolist()
        ]

    def get_model_info(self) -> dict:
        """What lm-eval records about the model in its results file."""
        cfg = self.scorer.config
        return {
            "model_name": self.name,
            "family": cfg.family,
            "architecture": cfg.name,
            "max_length": self.max_length,
            "eot_token_id": self.eot_token_id,
            "tokenizer_special_tokens": dict(self.tokenizer.specials),
            "length_buckets": list(self.scorer.buckets),
            "mesh": dict(self.scorer.mesh.shape),
        }
