"""Text models from config (no downloads), tokenizers, teacher-based initialisation."""

import pytest
import torch
from text_helpers import tiny_bert, write_vocab

from kdistill.config import HFSpec, TextCNNSpec
from kdistill.errors import ModelError
from kdistill.models.text import EncoderClassifier, TextCNN, build_text_model, encoder_of, init_from_teacher, load_tokenizer
from kdistill.taps import WithConnectors, unwrap


@pytest.fixture
def vocab(tmp_path):
    return str(write_vocab(tmp_path))


def _inputs(tok, texts=("good film", "the plot was very dull and cold")):
    enc = tok(list(texts), padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.parametrize("head", ["mean", "cls", "auto"])
def test_hf_model_from_config_gives_logits(vocab, head):
    tok = load_tokenizer(vocab)
    model = build_text_model(HFSpec(config=tiny_bert(), tokenizer=vocab, head=head), 3, vocab_size=len(tok))
    out = model(**_inputs(tok), output_hidden_states=True)
    assert out.logits.shape == (2, 3) and len(out.hidden_states) == 3
    assert isinstance(model, EncoderClassifier) == (head != "auto")


def test_mean_pooling_ignores_padding(vocab):
    tok = load_tokenizer(vocab)
    model = build_text_model(HFSpec(config=tiny_bert(), tokenizer=vocab), 2).eval()
    alone = model(**_inputs(tok, ["good film"])).logits
    batched = model(**_inputs(tok, ["good film", "the plot was very dull and cold"])).logits[:1]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_text_cnn_and_freeze_embeddings(vocab):
    tok = load_tokenizer(vocab)
    cnn = build_text_model(TextCNNSpec(tokenizer=vocab, embed_dim=8, channels=4), 2, vocab_size=len(tok))
    assert isinstance(cnn, TextCNN) and cnn(**_inputs(tok)).shape == (2, 2)
    frozen = build_text_model(HFSpec(config=tiny_bert(), tokenizer=vocab, freeze_embeddings=True), 2)
    assert not encoder_of(frozen).get_input_embeddings().weight.requires_grad


def test_no_downloads_and_clear_errors(vocab):
    with pytest.raises(ModelError, match="never downloads"):
        load_tokenizer("bert-base-uncased")
    with pytest.raises(ModelError, match="vocab_size"):
        build_text_model(HFSpec(config={**tiny_bert(), "vocab_size": 5}, tokenizer=vocab), 2, vocab_size=26)


def test_vocab_txt_tokenizer_knows_its_words(vocab):
    tok = load_tokenizer(vocab)
    ids = tok("Good film, BAD plot")["input_ids"]
    assert len(tok) == 27 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in (ids[1], ids[2], ids[4], ids[5])  # lower-cased words are known
    assert tok.pad_token_id == 0


def test_bundled_minilm_tokenizer_loads_offline():
    tok = load_tokenizer("all-MiniLM-L6-v2")
    assert tok("A fresh film")["input_ids"][0] == tok.cls_token_id and len(tok) == 30522


def test_init_from_teacher_copies_every_other_layer(vocab):
    torch.manual_seed(0)
    teacher = build_text_model(HFSpec(config=tiny_bert(16, 4), tokenizer=vocab), 2)
    student = build_text_model(HFSpec(config=tiny_bert(16, 2), tokenizer=vocab), 2)
    note = init_from_teacher(student, teacher, HFSpec(config=tiny_bert(16, 2), tokenizer=vocab))
    assert "[2, 4]" in note
    s, t = encoder_of(student), encoder_of(teacher)
    assert torch.equal(s.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight)
    for s_layer, t_layer in zip(s.encoder.layer, (t.encoder.layer[1], t.encoder.layer[3])):
        for (name, a), (_, b) in zip(s_layer.state_dict().items(), t_layer.state_dict().items()):
            assert torch.equal(a, b), name


def test_init_narrow_student_projects_embeddings_on_principal_directions(vocab):
    teacher = build_text_model(HFSpec(config=tiny_bert(16, 2), tokenizer=vocab), 2)
    student = build_text_model(HFSpec(config=tiny_bert(8, 2, 2), tokenizer=vocab), 2)
    assert "PCA" in init_from_teacher(student, teacher, HFSpec(config=tiny_bert(8, 2, 2), tokenizer=vocab))
    t_words = encoder_of(teacher).embeddings.word_embeddings.weight.double()
    s_words = encoder_of(student).embeddings.word_embeddings.weight.double()
    # the projection keeps the teacher's geometry in its top directions: centred Gram matrices of
    # the student's rows equal those of the teacher's rows projected on its top 8 components
    centred = t_words - t_words.mean(0)
    u, sv, _ = torch.linalg.svd(centred, full_matrices=False)
    expected = (u[:, :8] * sv[:8]) @ (u[:, :8] * sv[:8]).T
    got = (s_words - s_words.mean(0)) @ (s_words - s_words.mean(0)).T
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ModelError, match="teacher_layers"):
        init_from_teacher(student, teacher, HFSpec(config=tiny_bert(8, 2, 2), tokenizer=vocab, teacher_layers=[1]))


def test_projections_wrapper_exports_the_plain_student(vocab):
    student = build_text_model(HFSpec(config=tiny_bert(), tokenizer=vocab), 2)
    wrapped = WithConnectors(student, {"projections": torch.nn.ModuleDict({"s1_t2": torch.nn.Linear(16, 32)})})
    assert unwrap(wrapped) is student
    assert any(k.startswith("connectors.projections.") for k in wrapped.state_dict())
    assert not any("projections" in k for k in unwrap(wrapped).state_dict())


def test_factorized_embeddings_shrink_the_table_and_start_from_the_teachers_best_rank_k(vocab):
    torch.manual_seed(0)
    spec = lambda k: HFSpec(config=tiny_bert(16, 2), tokenizer=vocab, embedding_size=k)
    plain = build_text_model(HFSpec(config=tiny_bert(16, 2), tokenizer=vocab), 2)
    small = build_text_model(spec(4), 2)
    v = encoder_of(plain).embeddings.word_embeddings.weight.shape[0]
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(plain) - count(small) == v * 16 - (v * 4 + 4 * 16 + 16)
    tok = load_tokenizer(vocab)
    assert small(**_inputs(tok)).logits.shape == (2, 2)
    teacher = build_text_model(HFSpec(config=tiny_bert(16, 4), tokenizer=vocab), 2)
    t_words = encoder_of(teacher).embeddings.word_embeddings.weight
    for k in (4, 16):
        student = build_text_model(spec(k), 2)
        assert "layers from teacher layers [2, 4]" in init_from_teacher(student, teacher, spec(k))
        ids = torch.arange(v)
        rebuilt = encoder_of(student).get_input_embeddings()(ids).double()
        centred = t_words.double() - t_words.double().mean(0)
        u, sv, vt = torch.linalg.svd(centred, full_matrices=False)
        best = t_words.double().mean(0) + (u[:, :k] * sv[:k]) @ vt[:k]  # the best rank-k approximation
        torch.testing.assert_close(rebuilt, best, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="embedding_size applies to a model built from `config`"):
        HFSpec(name_or_path="all-MiniLM-L6-v2", embedding_size=8)
