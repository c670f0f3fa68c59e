"""Reasoning sections: the checker that accepts a completion, and the generation-based
evaluation (exact match on held-out problems) added to a causal LM's comparison rows."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from kdistill.config.base import Strict


class CheckerConfig(Strict):
    """How a completion's final answer is found and compared with the record's ``answer``.
    Records of the countdown family are verified by their rule (any expression reaching the
    target with the given numbers)."""

    extract: Literal["after_marker", "last_number", "regex"] = Field(
        "after_marker", description="after_marker: the rest of the line after the last `marker`; "
                                    "last_number: the last number; regex: `pattern`'s first group")
    marker: str = Field("answer:", min_length=1)
    pattern: Optional[str] = Field(None, description="extract: regex -- the last match's first group")
    match: Literal["exact", "numeric"] = Field("exact", description="exact: same text (whitespace "
                                               "runs collapsed); numeric: same number (7 == 7.0)")

    @model_validator(mode="after")
    def _pattern_with_regex(self):
        import re

        if self.extract == "regex":
            if not self.pattern:
                raise ValueError("extract: regex needs pattern (a regular expression with one group)")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
        elif self.pattern is not None:
            raise ValueError("pattern applies to extract: regex only")
        return self


class ReasoningEvalConfig(Strict):
    """Generation-based evaluation: every compared model answers the held-out problems (greedy,
    and ``samples`` sampled answers for pass@k), scored by the checker."""

    test: Path = Field(description="held-out problems, JSONL {prompt, answer} (e.g. a family's test.jsonl)")
    test_hard: Optional[Path] = Field(None, description="a harder split (more digits / steps)")
    checker: CheckerConfig = Field(default_factory=CheckerConfig)
    limit: Optional[int] = Field(None, gt=0, description="score only the first N problems of each split")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(64, gt=0)
    pass_k: Optional[int] = Field(None, gt=0, description="also pass@k from `samples` sampled answers")
    samples: int = Field(8, gt=0, description="sampled answers per problem for pass@k (n >= k)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _enough_samples(self):
        if self.pass_k is not None and self.samples < self.pass_k:
            raise ValueError(f"pass@{self.pass_k} needs samples >= {self.pass_k} (got {self.samples})")
        return self
