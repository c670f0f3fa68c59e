"""The character tokenizer: round trip, special tokens, unknown characters, save and reload."""

from kdistill.reasoning.tasks import FAMILIES, make_split
from kdistill.reasoning.tokenizer import CHARS, SPECIALS, bundled_tokenizer


def test_round_trip_of_every_task_text_one_token_per_character(tmp_path):
    tok = bundled_tokenizer("chars")
    assert len(tok) == len(SPECIALS) + len(CHARS) < 64
    for name in FAMILIES:
        for r in make_split(name, "test_hard", 5, seed=0):
            text = r["prompt"] + r["solution"]
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == len(text) and tok.unk_token_id not in ids
            assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("12+7=\nx", add_special_tokens=False)["input_ids"] == tok("12+7=\nx", add_special_tokens=False)["input_ids"]


def test_specials_and_unknown_characters():
    tok = bundled_tokenizer("chars")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok("aZ1" + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert ids[1] == tok.unk_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "a1"
