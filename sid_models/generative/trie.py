"""Constrained decoding: a prefix trie over all valid SIDs compiled to tensors, and one
batched beam search over every hypothesis of every query at once.

Trie tensors:
- `child_ptr` [n_nodes + 1], `child_code` [E_codes]: the codes allowed after node n are
  `child_code[child_ptr[n]:child_ptr[n + 1]]` (CSR). Every open hypothesis at decoding step
  t has spelled exactly t codes, so all of them sit at depth t and their allowed codes lie in
  one token range (level t's). With `child_mask` [n_nodes, K_max] bool (code c allowed after
  node n), built when it takes at most DENSE_MASK_BYTES, the allowed-token mask of the whole
  batch is one row gather from it into that range; without it (a 10M-item catalogue's
  disambiguation level is thousands of tokens wide, so the dense table would take tens of
  GB), one scatter of the concatenated child lists. Both give the same mask; the gather is
  the faster of the two where it fits;
- `terminal` [n_nodes] bool: a valid SID ends at n, so EOS is allowed there and only there
  (SIDs of different lengths, and a SID that is a prefix of another, are handled alike);
- `edge_key` [E] = parent * V + token over all code and EOS edges, sorted, with
  `edge_child` [E] (the child node; FINISHED after EOS) and `edge_sid` [E] (the SID that
  ends on an EOS edge, -1 on code edges): the next node of every hypothesis is one
  `searchsorted`.

Beam search (`beam_search`): hypotheses live in [B, W] tensors; each step the model scores
all B*W hypotheses in one call, the constraint turns its state into an allowed-token mask
[B*W, V], the W best of the W*V continuations per query are kept with one `topk`. A
finished hypothesis (after EOS) can only continue with PAD at log-prob 0, so it competes
with open prefixes in the same beam at a fixed score. With `length_penalty` a > 0 the
ranking key is sum(log p) / length^a (length counts SID tokens and EOS): without it a
short tail SID wins just by multiplying fewer probabilities. When W is at least the number
of valid SIDs nothing is ever pruned and the result is the exact ranking of all SIDs.

`DictTrieConstraint` is the reference: the `prefix_allowed_tokens_fn` pattern (a Python
function called per hypothesis over a dict trie). It drives the same beam loop, so the two
return identical rankings and differ only in how the constraint is evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from .model import Seq2SeqRetriever
from .vocab import BOS, EOS, PAD, SidVocab

DENSE_MASK_BYTES = 1 << 28     # 256 MiB: the largest dense child mask a trie keeps (see module docstring)
FINISHED = -2    # node id of a hypothesis that emitted EOS
DEAD = -1        # node id of an empty beam slot (fewer continuations than beams)


class Constraint(Protocol):
    def start(self, n_hypotheses: int, device: torch.device): ...

    def allowed(self, state, prefixes: torch.Tensor) -> torch.Tensor:
        """Bool mask [N, V] of tokens allowed after each open hypothesis."""

    def advance(self, state, parent: torch.Tensor, token: torch.Tensor): ...


class SidTrie:
    """The tensorised prefix trie (see module docstring); build with `SidTrie.build`."""

    def __init__(self, vocab: SidVocab, sids: list[tuple[int, ...]], child_ptr: torch.Tensor,
                 child_code: torch.Tensor, child_mask: torch.Tensor | None, terminal: torch.Tensor,
                 edge_key: torch.Tensor, edge_child: torch.Tensor, edge_sid: torch.Tensor):
        self.vocab, self.sids = vocab, sids
        self.child_ptr, self.child_code, self.child_mask, self.terminal = child_ptr, child_code, child_mask, terminal
        self.edge_key, self.edge_child, self.edge_sid = edge_key, edge_child, edge_sid
        self.sid_index = {sid: index for index, sid in enumerate(sids)}
        self.max_length = max(len(sid) for sid in sids)      # read by every beam search

    @classmethod
    def build(cls, sids: Sequence[Sequence[int]], vocab: SidVocab,
              dense_mask_bytes: int = DENSE_MASK_BYTES) -> "SidTrie":
        """Compile the distinct SIDs of `sids` (duplicates form one leaf bucket); the dense child
        mask is kept when n_nodes x K_max is at most `dense_mask_bytes`."""
        unique = sorted({tuple(int(code) for code in sid) for sid in sids})
        if not unique:
            raise ValueError("cannot build a trie over zero SIDs")
        children: list[dict[int, int]] = [{}]
        ends: list[int] = [-1]
        for index, sid in enumerate(unique):
            node = 0
            for level, code in enumerate(sid):
                vocab.token(level, code)            # raises on a code outside its level
                child = children[node].get(code)
                if child is None:
                    child = len(children)
                    children[node][code] = child
                    children.append({})
                    ends.append(-1)
                node = child
            ends[node] = index
        keys, child_ids, sid_ids, child_codes, child_counts = [], [], [], [], []
        depth = [0] * len(children)
        for node, edges in enumerate(children):
            child_counts.append(len(edges))
            for code, child in edges.items():
                depth[child] = depth[node] + 1
                child_codes.append(code)
                keys.append(node * vocab.size + vocab.token(depth[node], code))
                child_ids.append(child)
                sid_ids.append(-1)
            if ends[node] >= 0:
                keys.append(node * vocab.size + EOS)
                child_ids.append(FINISHED)
                sid_ids.append(ends[node])
        order = sorted(range(len(keys)), key=keys.__getitem__)

        def as_long(values):
            return torch.tensor([values[i] for i in order], dtype=torch.long)

        terminal = torch.tensor([end >= 0 for end in ends], dtype=torch.bool)
        counts = torch.tensor(child_counts, dtype=torch.long)
        child_ptr = torch.zeros(len(children) + 1, dtype=torch.long)
        child_ptr[1:] = torch.cumsum(counts, 0)
        child_code = torch.tensor(child_codes, dtype=torch.long)
        child_mask = None
        if len(children) * max(vocab.codes_per_level) <= dense_mask_bytes:
            child_mask = torch.zeros(len(children), max(vocab.codes_per_level), dtype=torch.bool)
            child_mask[torch.repeat_interleave(torch.arange(len(children)), counts), child_code] = True
        return cls(vocab, unique, child_ptr, child_code, child_mask, terminal,
                   as_long(keys), as_long(child_ids), as_long(sid_ids))

    @property
    def n_nodes(self) -> int:
        return self.terminal.numel()

    def to(self, device: torch.device | str) -> "SidTrie":
        child_mask = None if self.child_mask is None else self.child_mask.to(device)
        return SidTrie(self.vocab, self.sids, self.child_ptr.to(device), self.child_code.to(device), child_mask,
                       *(tensor.to(device) for tensor in (self.terminal, self.edge_key, self.edge_child, self.edge_sid)))

    def __contains__(self, sid) -> bool:
        return tuple(sid) in self.sid_index


@dataclass
class TrieState:
    node: torch.Tensor      # [N] current trie node, FINISHED or DEAD
    sid: torch.Tensor       # [N] index of the SID a finished hypothesis spelled, else -1


class TrieConstraint:
    """Allowed tokens = outgoing edges of each hypothesis's trie node, for all rows at once."""

    def __init__(self, trie: SidTrie):
        self.trie = trie

    def start(self, n_hypotheses: int, device: torch.device) -> TrieState:
        return TrieState(node=torch.zeros(n_hypotheses, dtype=torch.long, device=device),
                         sid=torch.full((n_hypotheses,), -1, dtype=torch.long, device=device))

    def allowed(self, state: TrieState, prefixes: torch.Tensor) -> torch.Tensor:
        trie, node = self.trie, state.node
        vocab = trie.vocab
        depth = prefixes.shape[1] - 1
        open_rows = node >= 0
        safe = node.clamp(min=0)
        mask = torch.zeros(node.numel(), vocab.size, dtype=torch.bool, device=node.device)
        if depth < vocab.levels and trie.child_mask is not None:
            width = vocab.codes_per_level[depth]
            offset = vocab.offset(depth)
            mask[:, offset:offset + width] = trie.child_mask[safe, :width] & open_rows[:, None]
        elif depth < vocab.levels:
            rows = open_rows.nonzero().squeeze(1)
            first = trie.child_ptr[node[rows]]
            count = trie.child_ptr[node[rows] + 1] - first
            # edge j of open row i sits at first_i + (j - start of row i in the concatenation)
            shift = torch.repeat_interleave(first - (torch.cumsum(count, 0) - count), count)
            edges = torch.arange(shift.numel(), device=node.device) + shift
            mask[torch.repeat_interleave(rows, count), vocab.offset(depth) + trie.child_code[edges]] = True
        mask[:, EOS] = trie.terminal[safe] & open_rows
        return mask

    def advance(self, state: TrieState, parent: torch.Tensor, token: torch.Tensor) -> TrieState:
        trie = self.trie
        node, sid = state.node[parent], state.sid[parent]
        key = node.clamp(min=0) * trie.vocab.size + token
        edge = torch.searchsorted(trie.edge_key, key).clamp(max=trie.edge_key.numel() - 1)
        found = (trie.edge_key[edge] == key) & (node >= 0)
        next_node = torch.where(found, trie.edge_child[edge], DEAD)
        next_node = torch.where(node == FINISHED, FINISHED, next_node)
        next_sid = torch.where(found & (token == EOS), trie.edge_sid[edge], sid)
        return TrieState(node=next_node, sid=next_sid)


class DictTrieConstraint:
    """Reference constraint: a Python dict trie walked per hypothesis, as a
    `prefix_allowed_tokens_fn(batch_id, prefix) -> list[int]` is in HF-style decoding."""

    def __init__(self, sids: Sequence[Sequence[int]], vocab: SidVocab):
        self.vocab = vocab
        self.root: dict = {}
        for sid in sids:
            node = self.root
            for level, code in enumerate(sid):
                node = node.setdefault(vocab.token(level, int(code)), {})
            node[EOS] = {}

    def prefix_allowed_tokens(self, prefix: list[int]) -> list[int]:
        node = self.root
        for token in prefix[1:]:            # skip BOS
            node = node.get(token)
            if node is None:
                return []
        return list(node.keys())

    def start(self, n_hypotheses: int, device: torch.device):
        return None

    def allowed(self, state, prefixes: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(prefixes.shape[0], self.vocab.size, dtype=torch.bool, device=prefixes.device)
        for row, prefix in enumerate(prefixes.tolist()):
            allowed = self.prefix_allowed_tokens(prefix)
            if allowed:
                mask[row, allowed] = True
        return mask

    def advance(self, state, parent: torch.Tensor, token: torch.Tensor):
        return None


class UnconstrainedConstraint:
    """No trie: any level code at any position, EOS after at least one code, at most
    `max_length` codes. Used to measure how often free decoding invents invalid SIDs."""

    def __init__(self, vocab: SidVocab, max_length: int):
        self.vocab, self.max_length = vocab, max_length

    def start(self, n_hypotheses: int, device: torch.device):
        return None

    def allowed(self, state, prefixes: torch.Tensor) -> torch.Tensor:
        n_codes = prefixes.shape[1] - 1
        mask = torch.zeros(prefixes.shape[0], self.vocab.size, dtype=torch.bool, device=prefixes.device)
        if n_codes < self.max_length:
            mask[:, EOS + 1:] = True
        if n_codes > 0:
            mask[:, EOS] = True
        return mask

    def advance(self, state, parent: torch.Tensor, token: torch.Tensor):
        return None


@dataclass
class BeamResult:
    """Per query, W hypotheses best first. `tokens` [B, W, T] start with BOS; `scores` are
    the ranking keys (length-normalised when asked); `finished` marks complete sequences."""

    tokens: torch.Tensor
    scores: torch.Tensor
    log_probs: torch.Tensor
    finished: torch.Tensor
    state: object = None


@torch.no_grad()
def beam_search(model: Seq2SeqRetriever, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                beams: int, max_steps: int, constraint: Constraint, length_penalty: float = 0.0,
                query_vectors: torch.Tensor | None = None) -> BeamResult:
    """Batched beam search under `constraint` (see module docstring); `query_vectors` for a
    model with a query-vector memory position."""
    was_training = model.training
    model.eval()
    batch = input_ids.shape[0]
    device = input_ids.device
    n_rows = batch * beams
    cache = model.start_cache(input_ids, attention_mask, beams, query_vectors)
    tokens = torch.full((n_rows, 1), BOS, dtype=torch.long, device=device)
    log_probs = torch.full((batch, beams), float("-inf"), device=device)
    log_probs[:, 0] = 0.0           # one live hypothesis per query, or beams start as duplicates
    lengths = torch.zeros(batch, beams, device=device)
    state = constraint.start(n_rows, device)
    row_offset = (torch.arange(batch, device=device) * beams)[:, None]
    for _ in range(max_steps):
        step = model.step(tokens[:, -1], cache)
        vocab = step.shape[-1]
        done = (tokens[:, -1] == EOS) | (tokens[:, -1] == PAD)
        step = torch.where(constraint.allowed(state, tokens), step, float("-inf"))
        pad_only = torch.full_like(step[0], float("-inf"))
        pad_only[PAD] = 0.0
        step = torch.where(done[:, None], pad_only, step).view(batch, beams, vocab)
        candidate = log_probs[:, :, None] + step
        grown = lengths[:, :, None] + (torch.arange(vocab, device=device) != PAD).float()
        key = candidate / grown.clamp(min=1.0) ** length_penalty if length_penalty else candidate
        best, flat = key.view(batch, -1).topk(beams, dim=1)
        parent_beam, token = flat // vocab, flat % vocab
        parent = (row_offset + parent_beam).view(-1)
        log_probs = candidate.view(batch, -1).gather(1, flat)
        lengths = grown.view(batch, -1).gather(1, flat)
        token = token.view(-1)
        state = constraint.advance(state, parent, token)
        tokens = torch.cat([tokens[parent], token[:, None]], dim=1)
        cache.reorder(parent)
        ended = (token == EOS) | (token == PAD) | torch.isinf(log_probs.view(-1))
        if bool(ended.all()):
            break
    if was_training:
        model.train()
    finished = ((tokens == EOS).any(dim=1).view(batch, beams)) & torch.isfinite(log_probs)
    return BeamResult(tokens=tokens.view(batch, beams, -1), scores=best, log_probs=log_probs,
                      finished=finished, state=state)


def constrained_beam_search(model: Seq2SeqRetriever, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            trie: SidTrie, beams: int, length_penalty: float = 0.0,
                            query_vectors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (sid_index [B, W] into `trie.sids`, -1 for empty slots; scores [B, W]) best first."""
    result = beam_search(model, input_ids, attention_mask, beams, trie.max_length + 1,
                         TrieConstraint(trie), length_penalty, query_vectors)
    sid = result.state.sid.view(result.scores.shape)
    sid = torch.where(result.finished, sid, -1)
    return sid, torch.where(result.finished, result.scores, float("-inf"))


def invalid_rate(result: BeamResult, trie: SidTrie) -> float:
    """Fraction of finished hypotheses whose token sequence is not a valid SID of `trie`
    (the hallucination rate of unconstrained decoding)."""
    valid = {tuple(trie.vocab.encode(sid)) for sid in trie.sids}
    total = invalid = 0
    for rows, finished in zip(result.tokens.tolist(), result.finished.tolist()):
        for row, done in zip(rows, finished):
            if done:
                spelled = tuple(row[1:row.index(EOS) + 1])
                total += 1
                invalid += spelled not in valid
    if total == 0:
        raise ValueError("no finished hypothesis to judge")
    return invalid / total
