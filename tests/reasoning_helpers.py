"""A scripted stand-in for a causal LM's ``generate``: each prompt has a list of candidate
completions and each sample picks one with torch's global generator (seeded by the caller), so
correctness is under the test's control and reruns under the same seed are identical."""

import torch


class ScriptedLM(torch.nn.Module):
    def __init__(self, tokenizer, answers: dict[str, list[str]], greedy: dict[str, str] | None = None):
        super().__init__()
        self.tok, self.answers, self.greedy = tokenizer, answers, greedy or {}
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, num_return_sequences=1, do_sample=False, max_new_tokens=8, **kw):
        self.calls += 1
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(ids[mask.bool()])
            for _ in range(num_return_sequences):
                if do_sample:
                    options = self.answers[prompt]
                    text = options[int(torch.randint(len(options), ()))]
                else:
                    text = self.greedy[prompt]
                new = self.tok(text, add_special_tokens=False)["input_ids"][: max_new_tokens - 1]
                rows.append(ids.tolist() + new + [self.tok.eos_token_id])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows])
