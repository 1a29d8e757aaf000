"""Synthetic queries: the extractive generator's exact choices, doc2query over tiny random seq2seq and causal models,
fine-tuning a query generator, and the canonical rows."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import minilm_path
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from hf_robust_ir.data.schema import ROW_FEATURES
from hf_robust_ir.synthetic import (
    DEFAULT_CAUSAL_PROMPT,
    GENERATOR_CONFIG_NAME,
    ExtractiveQueryGenerator,
    HFQueryGenerator,
    QueryGenerator,
    doc2query_features,
    synthetic_query_rows,
    train_query_generator,
)

DOC = (
    "Label noise hurts dense retrievers trained with contrastive losses. Short one. "
    "Hard negatives are often relevant passages in disguise! Why do annotators miss so many relevant passages?"
)
ELIGIBLE = [
    "Label noise hurts dense retrievers trained with contrastive losses.",
    "Hard negatives are often relevant passages in disguise!",
    "Why do annotators miss so many relevant passages?",
]
LONG_DOC = " ".join(f"word{i}" for i in range(200))
EMPTY_OR_SHORT = ["", "   ", "two words", "Tiny. Also tiny. Short one!"]


# ---------------------------------------------------------------- extractive
def test_sentence_mode_exact_choices():
    generator = ExtractiveQueryGenerator(seed=0)
    assert isinstance(generator, QueryGenerator)
    assert ExtractiveQueryGenerator.sentences(DOC) == [ELIGIBLE[0], "Short one.", ELIGIBLE[1], ELIGIBLE[2]]
    assert generator.generate([DOC], 1) == [[ELIGIBLE[2]]]
    assert generator.generate([DOC], 3) == [[ELIGIBLE[2], ELIGIBLE[1], ELIGIBLE[0]]]
    # asking for more than there are gives every eligible sentence once; the short one never
    assert generator.generate([DOC], 10) == generator.generate([DOC], 3)
    assert ExtractiveQueryGenerator(seed=1).generate([DOC], 3) == [ELIGIBLE]
    assert generator.generate([DOC], 0) == [[]]


def test_sentence_mode_crops_long_sentences_to_a_window():
    words = [f"w{i}" for i in range(30)]
    generator = ExtractiveQueryGenerator(max_words=10)
    assert generator.generate([" ".join(words) + "."], 1) == [["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"]]
    for seed in range(5):
        (query,) = ExtractiveQueryGenerator(max_words=10, seed=seed).generate([" ".join(words)], 1)[0]
        start = words.index(query.split()[0])
        assert query == " ".join(words[start : start + 10])


def test_span_mode_windows_and_bounds():
    generator = ExtractiveQueryGenerator("span", min_words=3, max_words=6)
    assert generator.generate([DOC], 3) == [
        ["in disguise! Why", "Label noise hurts dense", "trained with contrastive losses. Short one."]
    ]
    words = LONG_DOC.split()
    for query in ExtractiveQueryGenerator("span", min_words=5, max_words=12).generate([LONG_DOC], 20)[0]:
        n = len(query.split())
        assert 5 <= n <= 12
        start = words.index(query.split()[0])
        assert query == " ".join(words[start : start + n])
    # a document shorter than max_words gives windows shorter than it
    assert ExtractiveQueryGenerator("span", min_words=2, max_words=50).generate(["one two three"], 1)[0][0] in {
        "one two",
        "two three",
    }


@pytest.mark.parametrize("mode", ["sentence", "span"])
def test_extractive_is_deterministic_and_seeded(mode):
    documents = [DOC, LONG_DOC + ". " + LONG_DOC[::-1]]
    first = ExtractiveQueryGenerator(mode, seed=3).generate(documents, 2)
    assert ExtractiveQueryGenerator(mode, seed=3).generate(documents, 2) == first
    # the same document gets the same queries wherever it stands in the batch
    assert ExtractiveQueryGenerator(mode, seed=3).generate(documents[::-1], 2) == first[::-1]
    long_doc = ". ".join(" ".join(f"s{s}w{i}" for i in range(8)) for s in range(30)) + "."
    choices = {tuple(ExtractiveQueryGenerator(mode, seed=seed).generate([long_doc], 1)[0]) for seed in range(6)}
    assert len(choices) > 1


def test_extractive_empty_and_short_documents_give_nothing():
    assert ExtractiveQueryGenerator("sentence").generate(EMPTY_OR_SHORT, 3) == [[], [], [], []]
    # span mode reads across sentences: only documents under min_words words give nothing
    assert ExtractiveQueryGenerator("span").generate(EMPTY_OR_SHORT, 3)[:3] == [[], [], []]
    assert ExtractiveQueryGenerator("span", min_words=6).generate(EMPTY_OR_SHORT, 3) == [[], [], [], []]


def test_extractive_validates_arguments_and_config():
    with pytest.raises(ValueError, match="mode"):
        ExtractiveQueryGenerator("paragraph")
    with pytest.raises(ValueError, match="min_words"):
        ExtractiveQueryGenerator(min_words=5, max_words=4)
    assert ExtractiveQueryGenerator("span", 2, 9, seed=7).config() == {
        "generator": "extractive",
        "mode": "span",
        "min_words": 2,
        "max_words": 9,
        "seed": 7,
    }


# ---------------------------------------------------------------- canonical rows
def test_synthetic_query_rows_are_exact_canonical_rows():
    corpus = {
        "d1": DOC,
        "d2": "",
        "d3": "Cats sleep most of the day. Dogs bark at the mail carrier every morning.",
    }
    rows = synthetic_query_rows(corpus, ExtractiveQueryGenerator(), num_queries=2, batch_size=2, show_progress=False)

    def row(doc_id, k, query):
        return {
            "query_id": f"synthetic:{doc_id}:{k}",
            "query": query,
            "doc_ids": [doc_id],
            "labels": [1.0],
            "teacher_scores": [],
            "label_source": ["synthetic"],
        }

    assert rows == [
        row("d1", 0, ELIGIBLE[2]),
        row("d1", 1, ELIGIBLE[1]),
        row("d3", 0, "Dogs bark at the mail carrier every morning."),
        row("d3", 1, "Cats sleep most of the day."),
    ]
    dataset = datasets.Dataset.from_list(rows, features=ROW_FEATURES)
    assert len(dataset) == 4 and dataset[0]["labels"] == [1.0]
    only = synthetic_query_rows(corpus, ExtractiveQueryGenerator(), doc_ids=["d3"], show_progress=False)
    assert only == [row("d3", 0, "Dogs bark at the mail carrier every morning.")]
    with pytest.raises(KeyError, match="not in the corpus"):
        synthetic_query_rows(corpus, ExtractiveQueryGenerator(), doc_ids=["nope"], show_progress=False)


# ---------------------------------------------------------------- tiny random transformers models
@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def tiny_t5(tokenizer, seed: int = 0) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config).eval()


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def t5_path(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-t5")
    tiny_t5(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


DOCUMENTS = [
    "label noise hurts dense retrievers",
    "",
    "hard negatives are often relevant passages " * 40,
]


def _check_queries(out, num_queries):
    assert len(out) == len(DOCUMENTS) and out[1] == []
    for queries in (out[0], out[2]):
        assert 1 <= len(queries) <= num_queries
        assert len(set(queries)) == len(queries)
        assert all(isinstance(q, str) and q == q.strip() and q for q in queries)


def test_hf_seq2seq_generator_is_seeded_and_leaves_the_global_rng_alone(t5_path):
    generator = HFQueryGenerator(t5_path, max_new_tokens=6, batch_size=2)
    assert generator.architecture == "seq2seq" and generator.template == "{document}"
    state = torch.get_rng_state()
    out = generator.generate(DOCUMENTS, num_queries=3)
    assert torch.equal(torch.get_rng_state(), state)
    _check_queries(out, 3)
    assert generator.generate(DOCUMENTS, num_queries=3) == out
    assert HFQueryGenerator(t5_path, max_new_tokens=6, batch_size=2).generate(DOCUMENTS, num_queries=3) == out
    assert HFQueryGenerator(t5_path, max_new_tokens=6, batch_size=2, seed=1).generate(DOCUMENTS, 3) != out
    assert len(generator.input_ids(DOCUMENTS[2])) == 256  # clipped to max_input_length
    config = generator.config()
    assert config["model"] == t5_path and config["decoding"] == "sampling" and config["top_k"] == 25


def test_hf_generator_beam_search_without_sampling(t5_path):
    generator = HFQueryGenerator(t5_path, max_new_tokens=4, do_sample=False)
    out = generator.generate(DOCUMENTS, num_queries=2)
    _check_queries(out, 2)
    assert generator.config()["decoding"] == "beam_search"


def test_hf_causal_generator_decodes_only_new_tokens(tokenizer):
    model = tiny_llama(tokenizer)
    generator = HFQueryGenerator.from_model(model, tokenizer, max_new_tokens=5, max_input_length=64)
    assert generator.architecture == "causal" and generator.template == DEFAULT_CAUSAL_PROMPT
    out = generator.generate(DOCUMENTS, num_queries=2)
    _check_queries(out, 2)
    assert generator.generate(DOCUMENTS, num_queries=2) == out
    for query in out[0] + out[2]:
        assert "search query" not in query and "passage" not in query and len(query.split()) <= 5
    # the document is clipped, the instructions after it are kept
    ids = generator.input_ids(DOCUMENTS[2])
    suffix = tokenizer("\nQuery:", add_special_tokens=False)["input_ids"]
    assert len(ids) <= 64 and ids[-len(suffix) :] == suffix


def test_hf_causal_generator_with_a_scripted_generate(tokenizer, monkeypatch):
    """Left padding, the slice after the prompt, grouping of ``num_return_sequences`` and per-document dedup."""
    model = tiny_llama(tokenizer)
    words = [tokenizer.convert_tokens_to_ids(w) for w in ("cats", "dogs", "cats")]
    seen = []

    def scripted(input_ids, attention_mask, num_return_sequences, **kwargs):
        seen.append((input_ids, attention_mask, kwargs))
        prompts = input_ids.repeat_interleave(num_return_sequences, dim=0)
        new = torch.tensor([[words[j % 3], tokenizer.sep_token_id] for j in range(len(prompts))])
        return torch.cat([prompts, new], dim=1)

    monkeypatch.setattr(model, "generate", scripted)
    generator = HFQueryGenerator.from_model(model, tokenizer, max_new_tokens=2, batch_size=8)
    assert generator.generate(["short", "", "a much longer document about pets"], 3) == [
        ["cats", "dogs"],
        [],
        ["cats", "dogs"],
    ]
    ((input_ids, attention_mask, kwargs),) = seen
    assert input_ids.shape[0] == 2 and attention_mask[0, 0] == 0 and attention_mask[:, -1].all()  # left-padded
    assert kwargs["max_new_tokens"] == 2 and kwargs["top_k"] == 25 and kwargs["do_sample"]


def test_doc2query_features_mask_the_prompt(tokenizer):
    causal = doc2query_features(tokenizer, DEFAULT_CAUSAL_PROMPT, "cats sleep", "why do cats sleep", 64, 8, False, 102)
    prompt = tokenizer("Generate a search query for this passage:\ncats sleep\nQuery:", add_special_tokens=False)
    n = len(prompt["input_ids"])
    assert causal["input_ids"][:n] == prompt["input_ids"]
    assert causal["labels"][:n] == [-100] * n
    query = tokenizer(" why do cats sleep", add_special_tokens=False)["input_ids"]
    assert causal["labels"][n:] == causal["input_ids"][n:] == [*query, tokenizer.sep_token_id]  # the query, then EOS
    clipped = doc2query_features(tokenizer, DEFAULT_CAUSAL_PROMPT, "cats sleep", "why do cats sleep", 64, 2, False, 7)
    assert clipped["labels"][n:] == [*query[:2], 7]
    # the WordPiece tokenizer has no EOS of its own: without one given, none is appended
    plain = doc2query_features(tokenizer, DEFAULT_CAUSAL_PROMPT, "cats sleep", "why do cats sleep", 64, 8, False)
    assert plain["labels"][n:] == query
    seq2seq = doc2query_features(tokenizer, "{document}", "cats sleep", "why do cats sleep", 64, 3, True)
    assert seq2seq["input_ids"] == tokenizer("cats sleep")["input_ids"]
    assert len(seq2seq["labels"]) == 3  # cut at max_target_length


def _loss(model, tokenizer, pairs):
    inputs = tokenizer([d for d, _ in pairs], padding=True, return_tensors="pt")
    labels = tokenizer(text_target=[q for _, q in pairs], padding=True, return_tensors="pt")["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    with torch.no_grad():
        return model(**inputs, labels=labels).loss.item()


def test_train_query_generator_fine_tunes_a_loadable_seq2seq(t5_path, tokenizer, tmp_path):
    pairs = [
        ("cats sleep most of the day", "how long do cats sleep"),
        ("dogs bark at the mail carrier", "why do dogs bark"),
        ("label noise means some labels are wrong", "what is label noise"),
        ("hard negatives are mined with bm25", "how are hard negatives mined"),
    ] * 2
    out = train_query_generator(
        pairs,
        t5_path,
        tmp_path / "d2q",
        num_train_epochs=4,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        use_cpu=True,
    )
    assert out == str(tmp_path / "d2q")
    assert json.loads((tmp_path / "d2q" / GENERATOR_CONFIG_NAME).read_text()) == {
        "architecture": "seq2seq",
        "input_template": "{document}",
    }
    before, after = T5ForConditionalGeneration.from_pretrained(t5_path), T5ForConditionalGeneration.from_pretrained(out)
    assert not torch.equal(before.shared.weight, after.shared.weight)
    assert _loss(after, tokenizer, pairs) < _loss(before, tokenizer, pairs)
    generator = HFQueryGenerator(out, max_new_tokens=4)
    assert generator.architecture == "seq2seq"
    assert len(generator.generate(["cats sleep most of the day"], 2)[0]) >= 1


def test_train_query_generator_causal_writes_its_prompt(tokenizer, tmp_path):
    tiny_llama(tokenizer).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    prompt = "Passage: {document}\nA question it answers:"
    pairs = [("cats sleep most of the day", "how long do cats sleep"), ("dogs bark", "why do dogs bark")]
    out = train_query_generator(pairs, tmp_path / "llama", tmp_path / "d2q", prompt=prompt, max_steps=2, use_cpu=True)
    assert json.loads((tmp_path / "d2q" / GENERATOR_CONFIG_NAME).read_text()) == {
        "architecture": "causal",
        "prompt": prompt,
    }
    generator = HFQueryGenerator(out, max_new_tokens=3)
    assert generator.architecture == "causal" and generator.template == prompt  # read back from the folder
    assert HFQueryGenerator(out, prompt="Q for {document}:").template == "Q for {document}:"
    assert len(generator.generate(["cats sleep"], 1)) == 1
    with pytest.raises(ValueError, match="document"):
        HFQueryGenerator(out, prompt="no placeholder")


def test_extractive_never_returns_the_whole_document():
    one_sentence = "Label noise hurts dense retrievers trained with contrastive losses."
    assert ExtractiveQueryGenerator().generate([one_sentence, "  " + one_sentence.replace(" ", "  ")], 3) == [[], []]
    for seed in range(10):
        queries = ExtractiveQueryGenerator("span", min_words=2, max_words=50, seed=seed).generate(["one two three"], 5)
        assert queries[0] and set(queries[0]) <= {"one two", "two three"}
    # a document of min_words words has no shorter window
    assert ExtractiveQueryGenerator("span", min_words=3).generate(["one two three"], 2) == [[]]


def test_sentence_mode_repeated_sentences_count_once():
    doc = "Click here to read more about it. " * 2 + "Cats sleep most of the day. Dogs bark at the mail carrier."
    for seed in range(6):
        (queries,) = ExtractiveQueryGenerator(seed=seed).generate([doc], 2)
        assert len(queries) == 2


def test_hf_generator_drops_a_query_that_copies_the_document(tokenizer, monkeypatch):
    model = tiny_llama(tokenizer)
    copy = tokenizer("dogs bark", add_special_tokens=False)["input_ids"]

    def scripted(input_ids, attention_mask, num_return_sequences, **kwargs):
        prompts = input_ids.repeat_interleave(num_return_sequences, dim=0)
        new = [copy, [tokenizer.convert_tokens_to_ids("cats")] * len(copy)]
        return torch.cat([prompts, torch.tensor(new * len(input_ids))], dim=1)

    monkeypatch.setattr(model, "generate", scripted)
    generator = HFQueryGenerator.from_model(model, tokenizer, max_new_tokens=2)
    assert generator.generate(["dogs bark"], 2) == [["cats cats"]]


def test_synthetic_query_rows_repeated_doc_ids_get_one_set_of_queries():
    corpus = {"d1": "Cats sleep most of the day. Dogs bark at the mail carrier every morning."}
    rows = synthetic_query_rows(corpus, ExtractiveQueryGenerator(), doc_ids=["d1", "d1"], show_progress=False)
    assert [row["query_id"] for row in rows] == ["synthetic:d1:0"]


def test_a_prompt_without_room_for_the_document_is_an_error(tokenizer):
    from hf_robust_ir.synthetic.queries import _fill

    template = "Write a question that the following passage answers, in plain words: {document}"
    assert _fill(tokenizer, template, "cats sleep most of the day", 64, False).endswith("cats sleep most of the day")
    with pytest.raises(ValueError, match="leaving none of max_input_length=8"):
        _fill(tokenizer, template, "cats sleep most of the day", 8, False)


def test_train_query_generator_refuses_pairs_without_a_query(tmp_path):
    with pytest.raises(ValueError, match="non-empty document and query"):
        train_query_generator([("cats sleep", ""), ("dogs bark", "  ")], tmp_path / "nowhere", tmp_path / "out")


def newline_run_tokenizer():
    """A word-level tokenizer that, like the Llama 3 and Qwen2 ones, makes a run of newlines one token: without the
    document, the prompt's ``\\n{document}\\n`` becomes one ``\\n\\n`` token instead of two ``\\n`` tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "<unk>": 2, "\n": 3, "\n\n": 4, ":": 5}
    for word in "passage Query cats sleep most of the day".split():
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[ \t]+"), "removed"), pre_tokenizers.Split(Regex(r"[\r\n]+|:"), "isolated")]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")


def test_the_input_fits_max_input_length_when_the_prompt_tokenizes_differently_around_the_document():
    tokenizer = newline_run_tokenizer()
    model = tiny_llama(tokenizer)
    generator = HFQueryGenerator.from_model(model, tokenizer, prompt="passage:\n{document}\nQuery:", max_input_length=8)
    # <s> passage : \n {document} \n Query : -> 7 tokens around the document, room for one of its words
    ids = generator.input_ids("cats sleep most of the day")
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "passage", ":", "\n", "cats", "\n", "Query", ":"]
    features = doc2query_features(tokenizer, generator.prompt, "cats sleep most of the day", "cats", 8, 4, False)
    assert features["labels"].count(-100) == 8  # the training prompt is clipped the same way
