"""Seq2seq generative retriever: query WordPiece tokens in, semantic-ID tokens out.

A compact pre-LN encoder-decoder in the style of nanoGPT, written here rather than taken
from `transformers` (T5) because (1) the constrained beam search needs a decoder step that
shares one copy of the encoder memory and its cross-attention keys/values across the
beams of a query (`DecoderCache`) and reorders only the small self-attention cache, which
T5's generate-oriented cache API does not expose cleanly; (2) the decoder vocabulary is a
few hundred SID tokens with a tied output embedding and no relative-position buckets; (3)
RAD-DPO needs the final decoder hidden states next to the logits from one forward call;
and (4) ~200 readable lines are easier to audit than a configuration of a general library.

Encoder: the input (`encoder` `wordpiece`: a learned embedding of WordPiece ids; `minilm`:
the pretrained MiniLM's token states, through the model's copies of MiniLM's top
`tuned_layers` layers, then a linear map to d_model; see inputs.py) + learned position
embeddings, pre-LN blocks (self-attention, GELU MLP), final LayerNorm. With `query_vector_dim` > 0 the query's SCI vector f_q(query) (the space
the first SID level was cut in) is projected to d_model, normalised, and appended to the
token states as one more memory position: short, misspelt queries the small encoder cannot
read still carry the pretrained MiniLM geometry into cross-attention. Decoder: pre-LN blocks (causal self-attention, cross-attention, MLP),
final LayerNorm, logits = hidden @ token_embedding^T (tied).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..text.encoder import MINILM_WIDTH


@dataclass
class GenerativeConfig:
    """Sizes of the seq2seq model: a preset of params generative.presets, plus what the SIDs and
    the query vectors fix (model_config in train.py fills those)."""
    encoder: str                    # what the encoder reads: wordpiece | minilm (inputs.py)
    tuned_layers: int               # minilm: MiniLM's top layers the model fine-tunes (0 = all frozen)
    enc_vocab_size: int             # MiniLM WordPiece vocabulary
    dec_vocab_size: int             # SidVocab.size
    d_model: int
    n_heads: int
    n_enc_layers: int
    n_dec_layers: int
    d_ff: int
    dropout: float
    max_enc_len: int
    max_dec_len: int                # BOS + SID levels + EOS
    enc_pad_id: int
    dec_pad_id: int
    query_vector_dim: int           # width of the SCI query vector memory position; 0 = tokens only

    @classmethod
    def from_dict(cls, values: dict) -> "GenerativeConfig":
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown GenerativeConfig fields: {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, n_heads, width // n_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class SelfAttention(nn.Module):
    def __init__(self, config: GenerativeConfig, causal: bool):
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model {config.d_model} not divisible by n_heads {config.n_heads}")
        self.n_heads, self.causal, self.dropout = config.n_heads, causal, config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """`key_mask` [B, S] True where a key may be attended. With `cache` (a dict holding
        past "k"/"v" [B, H, t, hd]), `x` holds only the new positions, appended to it."""
        q, k, v = (_split_heads(part, self.n_heads) for part in self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        mask = None if key_mask is None else key_mask[:, None, None, :]
        # A cached step sees all past positions, so causality only matters for full sequences.
        causal = self.causal and cache is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.q = nn.Linear(config.d_model, config.d_model)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.n_heads), _split_heads(v, self.n_heads)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor) -> torch.Tensor:
        """`x` [B, T, d] attends to one query's memory per row; T may be positions of one
        sequence (training) or the beams of one query (decoding) alike."""
        k, v = memory_kv
        out = F.scaled_dot_product_attention(_split_heads(self.q(x), self.n_heads), k, v,
                                             attn_mask=memory_mask[:, None, None, :],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(_merge_heads(out))


class MLP(nn.Module):
    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class EncoderBlock(nn.Module):
    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config, causal=False)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), key_mask=mask)
        return x + self.mlp(self.ln_mlp(x))


class DecoderBlock(nn.Module):
    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.ln_self = nn.LayerNorm(config.d_model)
        self.self_attn = SelfAttention(config, causal=True)
        self.ln_cross = nn.LayerNorm(config.d_model)
        self.cross_attn = CrossAttention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, memory_kv, memory_mask: torch.Tensor,
                cache: dict | None = None, beams: int = 1) -> torch.Tensor:
        """Training: `x` [B, T, d]. Cached step: `x` [B*beams, 1, d]; cross-attention runs
        with the beams of a query as its T axis so the memory is never copied per beam."""
        x = x + self.self_attn(self.ln_self(x), cache=cache)
        if cache is None:
            x = x + self.cross_attn(self.ln_cross(x), memory_kv, memory_mask)
        else:
            rows = x.shape[0] // beams
            cross = self.cross_attn(self.ln_cross(x).view(rows, beams, -1), memory_kv, memory_mask)
            x = x + cross.view(rows * beams, 1, -1)
        return x + self.mlp(self.ln_mlp(x))


@dataclass
class DecoderCache:
    """Incremental-decoding state for `Seq2SeqRetriever.step`.

    `memory_kv`: per decoder layer, cross-attention keys/values [B, H, S, hd] computed once
    per query; `memory_mask` [B, S]; `layers`: per layer self-attention cache over
    [B*beams, H, t, hd]; `position`: number of decoder tokens consumed so far.
    """

    memory_kv: list
    memory_mask: torch.Tensor
    layers: list
    beams: int
    position: int = 0

    def reorder(self, hypothesis_index: torch.Tensor) -> None:
        """Keep the self-attention history of the selected hypotheses (flat indices)."""
        for layer in self.layers:
            for key in ("k", "v"):
                layer[key] = layer[key].index_select(0, hypothesis_index)


class Seq2SeqRetriever(nn.Module):
    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.config = config
        if config.encoder == "wordpiece":
            self.enc_tokens = nn.Embedding(config.enc_vocab_size, config.d_model, padding_idx=config.enc_pad_id)
        elif config.encoder == "minilm":
            self.enc_states = nn.Linear(MINILM_WIDTH, config.d_model)
        else:
            raise ValueError(f"GenerativeConfig.encoder must be wordpiece or minilm, got {config.encoder!r}")
        self.enc_positions = nn.Embedding(config.max_enc_len, config.d_model)
        self.enc_blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_enc_layers))
        self.enc_norm = nn.LayerNorm(config.d_model)
        if config.query_vector_dim:
            self.query_vector = nn.Linear(config.query_vector_dim, config.d_model)
            self.query_vector_norm = nn.LayerNorm(config.d_model)
        self.dec_tokens = nn.Embedding(config.dec_vocab_size, config.d_model)
        self.dec_positions = nn.Embedding(config.max_dec_len, config.d_model)
        self.dec_blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_dec_layers))
        self.dec_norm = nn.LayerNorm(config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.apply(self._init_weights)
        # GPT-2 scaling: residual branch outputs shrink with depth so the stream stays O(1).
        n_residual = 2 * config.n_enc_layers + 3 * config.n_dec_layers
        for name, parameter in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(n_residual))
        # after the init above: these start as MiniLM's own layers
        self.minilm_blocks = nn.ModuleList()
        if config.encoder == "minilm" and config.tuned_layers:
            from ..sci.text_tower import minilm_block
            from .inputs import frozen_layers

            first = frozen_layers(config.tuned_layers)
            self.minilm_blocks.extend(minilm_block(layer, config.dropout)
                                      for layer in range(first, first + config.tuned_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def encode(self, inputs: torch.Tensor, attention_mask: torch.Tensor,
               query_vectors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`inputs`: [B, S] WordPiece ids, or [B, S, 384] MiniLM token states (config.encoder), with
        the mask [B, S] (1 = token); [B, query_vector_dim] SCI query vectors when the config has
        them -> (memory [B, S(+1), d], memory mask [B, S(+1)] bool)."""
        if bool(self.config.query_vector_dim) != (query_vectors is not None):
            raise ValueError(f"model has query_vector_dim={self.config.query_vector_dim}: query vectors must be "
                             f"{'given' if self.config.query_vector_dim else 'omitted'}")
        expected_dims = 2 if self.config.encoder == "wordpiece" else 3
        if inputs.dim() != expected_dims:
            raise ValueError(f"a {self.config.encoder} encoder reads {expected_dims}-d inputs, got shape "
                             f"{tuple(inputs.shape)}")
        length = inputs.shape[1]
        if length > self.config.max_enc_len:
            raise ValueError(f"encoder input length {length} > max_enc_len {self.config.max_enc_len}")
        mask = attention_mask.bool()
        if self.config.encoder == "wordpiece":
            embedded = self.enc_tokens(inputs)
        else:
            states = inputs.float()
            for block in self.minilm_blocks:
                states = block(states, mask)
            embedded = self.enc_states(states)
        positions = torch.arange(length, device=inputs.device)
        x = self.drop(embedded + self.enc_positions(positions))
        for block in self.enc_blocks:
            x = block(x, mask)
        memory = self.enc_norm(x)
        if query_vectors is None:
            return memory, mask
        vector = self.query_vector_norm(self.query_vector(query_vectors.to(memory.dtype)))[:, None, :]
        return (torch.cat([memory, vector], dim=1),
                torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1))

    def decode(self, memory: torch.Tensor, memory_mask: torch.Tensor,
               decoder_input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder over `encode`'s (memory, memory mask):
        -> (logits [B, T, V], hidden [B, T, d] after the last norm)."""
        length = decoder_input_ids.shape[1]
        if length > self.config.max_dec_len:
            raise ValueError(f"decoder input length {length} > max_dec_len {self.config.max_dec_len}")
        positions = torch.arange(length, device=decoder_input_ids.device)
        x = self.drop(self.dec_tokens(decoder_input_ids) + self.dec_positions(positions))
        mask = memory_mask.bool()
        for block in self.dec_blocks:
            x = block(x, block.cross_attn.memory_kv(memory), mask)
        hidden = self.dec_norm(x)
        return hidden @ self.dec_tokens.weight.t(), hidden

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
                query_vectors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(*self.encode(inputs, attention_mask, query_vectors), decoder_input_ids)

    def start_cache(self, inputs: torch.Tensor, attention_mask: torch.Tensor, beams: int,
                    query_vectors: torch.Tensor | None = None) -> DecoderCache:
        """Encode a batch once and prepare incremental decoding of `beams` hypotheses per query."""
        memory, memory_mask = self.encode(inputs, attention_mask, query_vectors)
        return DecoderCache(memory_kv=[block.cross_attn.memory_kv(memory) for block in self.dec_blocks],
                            memory_mask=memory_mask, layers=[{} for _ in self.dec_blocks], beams=beams)

    def step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """One decoder position for every hypothesis: `tokens` [B*beams] -> log-probs [B*beams, V].

        Hypotheses are laid out query-major (query b's beams are rows b*beams .. b*beams+beams-1).
        """
        if cache.position >= self.config.max_dec_len:
            raise ValueError(f"decoder position {cache.position} >= max_dec_len {self.config.max_dec_len}")
        position = torch.full((1,), cache.position, device=tokens.device, dtype=torch.long)
        x = self.dec_tokens(tokens)[:, None, :] + self.dec_positions(position)
        for block, memory_kv, layer_cache in zip(self.dec_blocks, cache.memory_kv, cache.layers):
            x = block(x, memory_kv, cache.memory_mask, cache=layer_cache, beams=cache.beams)
        cache.position += 1
        logits = self.dec_norm(x[:, 0, :]) @ self.dec_tokens.weight.t()
        return torch.log_softmax(logits.float(), dim=-1)

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())


def init_encoder_embeddings(model: Seq2SeqRetriever, word_embeddings: torch.Tensor) -> None:
    """Initialise the encoder token embeddings from MiniLM's WordPiece embeddings [V, 384].

    When d_model differs from 384 the embeddings are projected onto their top d_model
    principal directions (keeps the most variance of the pre-trained geometry) and
    rescaled to the model's init std, so the choice of width does not change the input scale.
    """
    if model.config.encoder != "wordpiece":
        raise ValueError(f"a {model.config.encoder} encoder has no token embeddings to initialise")
    target = model.enc_tokens.weight
    if word_embeddings.shape[0] != target.shape[0]:
        raise ValueError(f"MiniLM vocabulary {word_embeddings.shape[0]} != enc_vocab_size {target.shape[0]}")
    source = word_embeddings.float()
    width = target.shape[1]
    if width != source.shape[1]:
        if width > source.shape[1]:
            raise ValueError(f"d_model {width} > MiniLM width {source.shape[1]}: cannot project up")
        centred = source - source.mean(dim=0, keepdim=True)
        _, _, directions = torch.linalg.svd(centred, full_matrices=False)
        source = centred @ directions[:width].t()
    source = source * (0.02 / source.std())
    with torch.no_grad():
        target.copy_(source)


def save_model(model: Seq2SeqRetriever, folder: str | Path) -> None:
    """`model.pt` (state_dict) + `config.json` in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> Seq2SeqRetriever:
    folder = Path(folder)
    for name in ("model.pt", "config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"generative checkpoint {folder} lacks {name}")
    values = json.loads((folder / "config.json").read_text())
    if "encoder" not in values:     # written before encoder kinds existed: a WordPiece encoder
        values.update(encoder="wordpiece", tuned_layers=0)
    model = Seq2SeqRetriever(GenerativeConfig.from_dict(values))
    model.load_state_dict(torch.load(folder / "model.pt", map_location=map_location, weights_only=True))
    return model
