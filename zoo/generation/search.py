"""The search loops: greedy and sampled decoding (one step at a time, for streaming) and beam
search. They talk to a decoding state only (``zoo.generation.state``), so they serve causal LMs
and encoder-decoders alike."""

from collections.abc import Iterator

import torch

from zoo.generation.config import GenerationConfig
from zoo.generation.processing import _Processor

# Added to scores that must never win (finished or banned candidates), as transformers does:
# a finite value keeps the beam arithmetic free of inf - inf.
NEG = -1.0e9


class _Sampler:
    """Greedy or sampled decoding, one step per call; the work runs in inference mode (no
    autograd bookkeeping), while the caller, between steps, stays in whatever mode it was in."""

    @torch.inference_mode()
    def __init__(self, model, input_ids, attention_mask, c: GenerationConfig, generator):
        self.c, self.generator = c, generator
        self.decoder = model.start_decoding(input_ids, attention_mask, c.max_new_tokens, use_cache=c.use_cache)
        self.prefix = self.decoder.sequences.clone()  # what the output starts with
        self.process = _Processor(c, self.decoder.prompt_len, self.decoder.first_real, input_ids.device)
        self.unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.steps_left = c.max_new_tokens
        self.last: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        if self.steps_left == 0:
            return True
        return self.process.eos is not None and not self.unfinished.any()

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """The next (B,) tokens."""
        if self.last is not None:
            self.decoder.append(self.last)
        tokens = None
        if not self.c.do_sample and not self.process.changes_greedy(self.decoder.sequences):
            tokens = self.decoder.greedy_tokens()  # None unless the output projection is screened
        if tokens is None:
            scores = self.process(self.decoder.logits(), self.decoder.sequences)
            if self.c.do_sample:
                tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=self.generator).squeeze(1)
            else:
                tokens = scores.argmax(dim=-1)
        eos = self.process.eos
        if eos is not None:  # rows that have stopped get the pad token, and stay stopped
            tokens = torch.where(self.unfinished, tokens, self.c.pad)
            self.unfinished &= ~torch.isin(tokens, eos)
        self.steps_left -= 1
        self.last = tokens
        return tokens


def sample_steps(sampler: _Sampler) -> Iterator[torch.Tensor]:
    """Greedy or sampled decoding: yields the (B,) tokens of each step."""
    while not sampler.done:
        yield sampler.step().clone()  # a clone outside inference mode is an ordinary tensor


def beam_search(model, input_ids, attention_mask, c: GenerationConfig) -> torch.Tensor:
    """Beam search as transformers runs it (vectorised over the batch), returning the best beam
    (B, prompt + new): a causal LM's prompt, an encoder-decoder's start token, then the tokens.

    Each step keeps the ``keep`` best (beam, token) continuations by summed log-probability, the
    ``num_beams`` best of those that did not end go on, and those that ended (an end token, or
    the length limit) join each row's finished hypotheses scored by sum / length**length_penalty.
    """
    B = input_ids.shape[0]
    device = input_ids.device
    decoder = model.start_decoding(input_ids, attention_mask, c.max_new_tokens, use_cache=c.use_cache)
    prefix, T = decoder.sequences.clone(), decoder.prompt_len  # (B, T) what every beam starts with
    K, max_len, lp_exp = c.num_beams, T + c.max_new_tokens, c.length_penalty
    start = decoder.first_real
    process = _Processor(c, T, start.repeat_interleave(K) if start is not None else None, device)
    eos = process.eos
    keep = max(2, 1 + len(c.eos_token_id)) * K  # enough that num_beams survive even if many end
    fill = c.pad if c.pad is not None else 0  # only ever visible after an end token

    logits = decoder.logits()  # the prompt (or the sources) once per row, then copied into its beams
    expand = torch.arange(B, device=device).repeat_interleave(K)
    decoder.reorder(expand)
    logits = logits.index_select(0, expand)

    running = torch.full((B, K, max_len), fill, dtype=prefix.dtype, device=device)
    running[:, :, :T] = prefix[:, None]
    running_score = torch.zeros(B, K, device=device)
    running_score[:, 1:] = NEG  # all beams start equal: only the first may expand at step one
    done_seq = running.clone()
    done_score = torch.full((B, K), NEG, device=device)
    done = torch.zeros(B, K, dtype=torch.bool, device=device)
    done_len = torch.zeros(B, K, dtype=torch.long, device=device)  # new tokens in each finished hypothesis
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    in_top = torch.arange(keep, device=device) < K  # only the num_beams best may finish
    row_offset = torch.arange(B, device=device)[:, None] * K

    for cur in range(T, max_len):
        logprobs = process(logits.log_softmax(dim=-1), running[:, :, :cur].reshape(B * K, cur))
        V = logprobs.shape[-1]
        total = (logprobs.view(B, K, V) + running_score[:, :, None]).view(B, K * V)
        cand_score, flat = total.topk(keep, dim=1)  # (B, keep)
        parent, token = flat // V, flat % V
        cand = running.gather(1, parent[:, :, None].expand(-1, -1, max_len)).clone()  # (B, keep, max_len)
        cand[:, :, cur] = token
        cand_row = parent + row_offset  # flat decoder row of each candidate's parent
        ended = torch.zeros_like(in_top).expand(B, keep) if eos is None else torch.isin(token, eos)
        if cur + 1 >= max_len:
            ended = torch.ones_like(ended)

        # The num_beams best continuations that did not end run on.
        live_score = cand_score + ended.float() * NEG
        pick = live_score.topk(K, dim=1).indices
        running = cand.gather(1, pick[:, :, None].expand(-1, -1, max_len))
        running_score = live_score.gather(1, pick)
        rows = cand_row.gather(1, pick)

        # Those that ended compete with the finished hypotheses for the num_beams places.
        just = ended & in_top
        final = cand_score / ((cur + 1 - T) ** lp_exp)
        final += (done.all(dim=1, keepdim=True) & (c.early_stopping is True)).float() * NEG
        final += (~improvable).float() * NEG
        final += (~just) * NEG
        merged = torch.cat((done_score, final), dim=1)
        best = merged.topk(K, dim=1).indices
        done_seq = torch.cat((done_seq, cand), dim=1).gather(1, best[:, :, None].expand(-1, -1, max_len))
        done_score = merged.gather(1, best)
        done = torch.cat((done, just), dim=1).gather(1, best)
        done_len = torch.cat((done_len, torch.full_like(cand_row, cur + 1 - T)), dim=1).gather(1, best)

        # Can a running beam still beat the worst finished one? (transformers' heuristic: with
        # early_stopping="never" and a positive length penalty it assumes the longest length.)
        best_len = (max_len if c.early_stopping == "never" and lp_exp > 0 else cur + 1) - T
        best_running = running_score[:, :1] / (best_len**lp_exp)
        worst_done = torch.where(done, done_score.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst_done).any(dim=1, keepdim=True)
        all_done = bool(done.all()) and c.early_stopping is True
        if not improvable.any() or all_done or bool(ended.all()):
            break
        decoder.reorder(rows.flatten())
        decoder.append(running[:, :, cur].flatten())
        logits = decoder.logits()

    return done_seq[:, 0, : T + int(done_len[:, 0].max())]
