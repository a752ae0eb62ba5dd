"""Decoder vocabulary: semantic IDs (tuples of per-level codes) <-> decoder token ids.

Layout: PAD=0, BOS=1, EOS=2, then one contiguous token range per SID level, level l
holding `codes_per_level[l]` tokens. A code is only meaningful at its own level, so
code 5 at level 0 and code 5 at level 1 are different tokens; this is what lets the
constrained decoder restrict each step to one level's range and keeps the tied output
embedding of a level from competing with another level's codes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3


@dataclass(frozen=True)
class SidVocab:
    codes_per_level: tuple[int, ...]

    def __post_init__(self):
        if not self.codes_per_level or any(int(n) < 1 for n in self.codes_per_level):
            raise ValueError(f"codes_per_level must be non-empty positive counts, got {self.codes_per_level}")
        object.__setattr__(self, "codes_per_level", tuple(int(n) for n in self.codes_per_level))

    pad_id = PAD
    bos_id = BOS
    eos_id = EOS

    @classmethod
    def load(cls, sids_folder: str | Path) -> "SidVocab":
        """From a semantic_ids folder's vocab.json ({"levels": L, "codes_per_level": [...]})."""
        path = Path(sids_folder) / "vocab.json"
        spec = json.loads(path.read_text())
        codes = spec.get("codes_per_level")
        if codes is None:
            raise ValueError(f"{path} has no 'codes_per_level'")
        if "levels" in spec and int(spec["levels"]) != len(codes):
            raise ValueError(f"{path}: levels={spec['levels']} but {len(codes)} codes_per_level entries")
        return cls(tuple(codes))

    @classmethod
    def for_sids(cls, sids: Sequence[Sequence[int]]) -> "SidVocab":
        """The smallest vocabulary that holds every code of `sids` at its level."""
        levels = max(len(sid) for sid in sids)
        codes = [0] * levels
        for sid in sids:
            for level, code in enumerate(sid):
                codes[level] = max(codes[level], int(code) + 1)
        return cls(tuple(max(n, 1) for n in codes))

    @property
    def levels(self) -> int:
        return len(self.codes_per_level)

    @property
    def size(self) -> int:
        return N_SPECIAL + sum(self.codes_per_level)

    def offset(self, level: int) -> int:
        return N_SPECIAL + sum(self.codes_per_level[:level])

    def token(self, level: int, code: int) -> int:
        if not 0 <= level < self.levels:
            raise ValueError(f"SID level {level} outside 0..{self.levels - 1}")
        if not 0 <= code < self.codes_per_level[level]:
            raise ValueError(f"code {code} at level {level} outside 0..{self.codes_per_level[level] - 1}")
        return self.offset(level) + int(code)

    def encode(self, sid: Sequence[int]) -> list[int]:
        """SID codes -> decoder targets: one token per level, then EOS (no BOS)."""
        if len(sid) == 0:
            raise ValueError("empty SID")
        return [self.token(level, code) for level, code in enumerate(sid)] + [EOS]

    def decode(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """Decoder tokens -> SID codes. A leading BOS is skipped; reading stops at EOS/PAD.

        Raises on a token that is not a code of the level it stands at (an invalid SID).
        """
        tokens = [int(t) for t in tokens]
        if tokens and tokens[0] == BOS:
            tokens = tokens[1:]
        sid = []
        for level, token in enumerate(tokens):
            if token in (EOS, PAD):
                break
            if level >= self.levels:
                raise ValueError(f"token sequence {tokens} is longer than {self.levels} levels")
            code = token - self.offset(level)
            if not 0 <= code < self.codes_per_level[level]:
                raise ValueError(f"token {token} at position {level} is not a level-{level} code")
            sid.append(code)
        return tuple(sid)

    def to_json(self) -> dict:
        return {"levels": self.levels, "codes_per_level": list(self.codes_per_level)}
