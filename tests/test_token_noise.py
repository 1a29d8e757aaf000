"""Token noise on the student's inputs (noisy student): each kind's exact properties, determinism, the collator's
"student only" rule and the trainer arguments."""

import math
import random
from collections import Counter

import datasets
import pytest
import torch
from conftest import canonical_row, tiny_bert_config
from transformers import AutoTokenizer, BertForSequenceClassification

from hf_robust_ir.data import TokenNoise
from hf_robust_ir.data.collator import RetrievalCollator
from hf_robust_ir.data.schema import ROW_FEATURES
from hf_robust_ir.data.token_noise import repack
from hf_robust_ir.modeling import BiEncoder, CrossEncoder
from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments, default_collator

KINDS = ["shuffle", "delete", "replace", "mask", "sequential"]
# distinct words, so a moved token is seen as moved; the third text tokenizes to [CLS] [SEP] only
TEXTS = [
    "the quick brown fox jumps over lazy dogs",
    "alpha beta gamma",
    "",
    "one two three four five six seven eight nine ten",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def _encode(tokenizer, texts, **kwargs):
    return tokenizer(texts, padding=True, return_special_tokens_mask=True, return_tensors="pt", **kwargs)


def _apply(noise, encoded, tokenizer, seed=0, **kwargs):
    return noise.apply(
        encoded["input_ids"],
        encoded["attention_mask"],
        encoded["special_tokens_mask"],
        tokenizer,
        torch.Generator().manual_seed(seed),
        **kwargs,
    )


def _real(ids, attention):
    """Each row's real (attended) tokens, in order."""
    return [[t for t, a in zip(row, mask) if a] for row, mask in zip(ids.tolist(), attention.tolist())]


def _random_texts(n, seed=0, words=30):
    rng = random.Random(seed)
    vocab = "apple river stone cloud music garden window paper silver forest candle bridge orange planet".split()
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, words))) for _ in range(n)]


# ------------------------------------------------------------------ every kind


@pytest.mark.parametrize("kind", KINDS)
def test_p_zero_returns_the_input_unchanged(tokenizer, kind):
    encoded = _encode(tokenizer, TEXTS)
    out = _apply(TokenNoise(kind, p=0.0), encoded, tokenizer)
    assert set(out) == {"input_ids", "attention_mask"}
    assert torch.equal(out["input_ids"], encoded["input_ids"])
    assert torch.equal(out["attention_mask"], encoded["attention_mask"])


@pytest.mark.parametrize("p", [0.3, 1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_never_move_change_or_disappear(tokenizer, kind, p):
    texts = TEXTS + ["a literal [MASK] and an [UNK] stay", "x"]
    encoded = _encode(tokenizer, texts)
    special_ids = set(tokenizer.all_special_ids)
    out = _apply(TokenNoise(kind, p=p), encoded, tokenizer, seed=3)
    ids, attention = out["input_ids"], out["attention_mask"]
    if kind in ("delete", "sequential"):  # positions shift; the special tokens keep their order and count
        before, after = _real(encoded["input_ids"], encoded["attention_mask"]), _real(ids, attention)
        # sequential ends with masking, which adds [MASK] tokens: compare the other special tokens
        kept = special_ids - {tokenizer.mask_token_id} if kind == "sequential" else special_ids
        for old, new in zip(before, after):
            assert [t for t in new if t in kept] == [t for t in old if t in kept]
            assert new.count(tokenizer.mask_token_id) >= old.count(tokenizer.mask_token_id)
            assert new[0] == tokenizer.cls_token_id and new[-1] == tokenizer.sep_token_id
        return
    assert ids.shape == encoded["input_ids"].shape
    assert torch.equal(attention, encoded["attention_mask"])
    fixed = encoded["special_tokens_mask"].bool() | torch.isin(encoded["input_ids"], torch.tensor(sorted(special_ids)))
    assert torch.equal(ids[fixed], encoded["input_ids"][fixed])  # same value at the same position (padding too)
    if kind != "mask":
        assert not torch.isin(ids[~fixed], torch.tensor(sorted(special_ids))).any()


# ------------------------------------------------------------------ shuffle


def test_shuffle_permutes_hit_tokens_among_their_own_positions(tokenizer):
    encoded = _encode(tokenizer, _random_texts(64, seed=1))
    ids, attention = encoded["input_ids"], encoded["attention_mask"]
    eligible = attention.bool() & ~encoded["special_tokens_mask"].bool()
    out = _apply(TokenNoise("shuffle", p=0.3), encoded, tokenizer, seed=5)
    assert out["input_ids"].shape == ids.shape and torch.equal(out["attention_mask"], attention)
    changed = out["input_ids"] != ids
    assert not (changed & ~eligible).any()  # only eligible positions can change
    for row in range(ids.shape[0]):
        # the tokens that left the changed positions are exactly the tokens that arrived there
        assert Counter(ids[row][changed[row]].tolist()) == Counter(out["input_ids"][row][changed[row]].tolist())
    fraction = changed.sum().item() / eligible.sum().item()
    assert 0.05 < fraction < 0.35  # hits are ~30% of tokens; a permuted hit can land on its own (or an equal) token


def test_shuffle_with_p_one_permutes_all_real_tokens(tokenizer):
    encoded = _encode(tokenizer, TEXTS)
    out = _apply(TokenNoise("shuffle", p=1.0), encoded, tokenizer, seed=2)
    before, after = (
        _real(encoded["input_ids"], encoded["attention_mask"]),
        _real(out["input_ids"], out["attention_mask"]),
    )
    for old, new in zip(before, after):
        assert (new[0], new[-1]) == (old[0], old[-1])
        assert sorted(new[1:-1]) == sorted(old[1:-1])
    assert after[3] != before[3]  # ten distinct words: the identity permutation has probability 1 / 10!


# ------------------------------------------------------------------ delete


def test_repack_moves_kept_tokens_left_and_pads_the_rest():
    ids = torch.tensor([[101, 5, 6, 7, 102, 0], [101, 8, 9, 102, 0, 0], [101, 102, 0, 0, 0, 0]])
    attention = (ids != 0).long()
    fixed = torch.isin(ids, torch.tensor([0, 101, 102]))
    keep = torch.tensor([[1, 0, 1, 0, 1, 0], [1, 1, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    packed, new_attention, packed_fixed = repack(ids, attention, fixed, keep, pad_id=0)
    assert packed.tolist() == [[101, 6, 102, 0, 0, 0], [101, 8, 102, 0, 0, 0], [101, 102, 0, 0, 0, 0]]
    assert new_attention.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert packed_fixed.tolist() == [[True, False, True, False, False, False]] * 2 + [[True, True] + [False] * 4]


def test_delete_with_p_one_keeps_exactly_one_random_token_per_row(tokenizer):
    encoded = _encode(tokenizer, TEXTS)
    before = _real(encoded["input_ids"], encoded["attention_mask"])
    survivors = set()
    for seed in range(20):
        out = _apply(TokenNoise("delete", p=1.0), encoded, tokenizer, seed=seed)
        ids, attention = out["input_ids"], out["attention_mask"]
        assert ids.shape == (4, 3)  # [CLS] token [SEP]: the trailing all-padding columns are trimmed
        assert attention.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
        assert ids[2].tolist() == [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]
        for row in (0, 1, 3):
            assert ids[row, 0] == tokenizer.cls_token_id and ids[row, 2] == tokenizer.sep_token_id
            assert ids[row, 1].item() in before[row][1:-1]
        survivors.add(ids[3, 1].item())
    assert len(survivors) > 3  # the kept token is a random one, not always the first


def test_delete_gives_an_ordered_subsequence_repacked_and_trimmed(tokenizer):
    encoded = _encode(tokenizer, _random_texts(64, seed=2))
    before = _real(encoded["input_ids"], encoded["attention_mask"])
    out = _apply(TokenNoise("delete", p=0.4), encoded, tokenizer, seed=1)
    ids, attention = out["input_ids"], out["attention_mask"]
    lengths = attention.sum(1)
    assert ids.shape[1] == lengths.max().item() <= encoded["input_ids"].shape[1]
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    assert torch.equal(attention.bool(), positions < lengths.unsqueeze(1))  # real tokens first, then padding
    assert (ids[~attention.bool()] == tokenizer.pad_token_id).all()
    deleted = 0
    for old, new in zip(before, _real(ids, attention)):
        it = iter(old)
        assert all(t in it for t in new)  # an ordered subsequence
        assert len(new) >= 3 and new[0] == old[0] and new[-1] == old[-1]
        deleted += len(old) - len(new)
    eligible = sum(len(old) - 2 for old in before)
    assert 0.3 < deleted / eligible < 0.5


def test_delete_keeps_the_width_a_multiple_of_pad_to_multiple_of(tokenizer):
    encoded = _encode(tokenizer, TEXTS, pad_to_multiple_of=8)
    assert encoded["input_ids"].shape[1] == 16
    out = _apply(TokenNoise("delete", p=1.0), encoded, tokenizer, pad_to_multiple_of=8)
    assert out["input_ids"].shape == (4, 8) and out["attention_mask"].sum(1).tolist() == [3, 3, 2, 3]


def test_delete_with_left_padding_packs_to_the_right(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path, padding_side="left")
    encoded = _encode(tokenizer, ["alpha beta gamma delta", "x"])
    out = _apply(TokenNoise("delete", p=1.0), encoded, tokenizer)
    ids, attention = out["input_ids"], out["attention_mask"]
    assert attention.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert ids[:, 0].tolist() == [tokenizer.cls_token_id] * 2 and ids[:, 2].tolist() == [tokenizer.sep_token_id] * 2
    encoded = _encode(tokenizer, ["alpha beta gamma delta", ""])
    out = _apply(TokenNoise("delete", p=1.0), encoded, tokenizer)
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert out["input_ids"][1].tolist() == [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]


# ------------------------------------------------------------------ replace and mask


def test_replace_draws_non_special_tokens_for_about_p_of_the_tokens(tokenizer):
    encoded = _encode(tokenizer, _random_texts(128, seed=3))
    ids, attention = encoded["input_ids"], encoded["attention_mask"]
    eligible = attention.bool() & ~encoded["special_tokens_mask"].bool()
    out = _apply(TokenNoise("replace", p=0.2), encoded, tokenizer, seed=4)
    new = out["input_ids"]
    changed = new != ids
    assert not (changed & ~eligible).any()
    replaced = new[changed]
    assert not torch.isin(replaced, torch.tensor(tokenizer.all_special_ids)).any()
    assert (replaced >= 0).all() and (replaced < len(tokenizer)).all()
    fraction = changed.sum().item() / eligible.sum().item()
    assert 0.15 < fraction < 0.25
    assert len(set(replaced.tolist())) > 0.9 * len(replaced)  # drawn from the whole vocabulary, not a few ids


def test_mask_with_p_one_masks_every_real_non_special_token(tokenizer):
    encoded = _encode(tokenizer, TEXTS)
    out = _apply(TokenNoise("mask", p=1.0), encoded, tokenizer)
    cls, sep, pad, mask = (
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
        tokenizer.mask_token_id,
    )
    width = encoded["input_ids"].shape[1]
    expected = []
    for n in encoded["attention_mask"].sum(1).tolist():
        expected.append([cls] + [mask] * (n - 2) + [sep] + [pad] * (width - n))
    assert out["input_ids"].tolist() == expected
    assert torch.equal(out["attention_mask"], encoded["attention_mask"])


def test_mask_needs_a_mask_token(tokenizer):
    class NoMask:
        mask_token_id = None
        pad_token_id = 0
        all_special_ids = [0, 101, 102]

    encoded = _encode(tokenizer, TEXTS)
    for kind in ("mask", "sequential"):
        with pytest.raises(ValueError, match="mask token"):
            _apply(TokenNoise(kind, p=0.5), encoded, NoMask())
        with pytest.raises(ValueError, match="mask token"):
            RetrievalCollator(NoMask(), {}, student_noise=kind)
    _apply(TokenNoise("shuffle", p=0.5), encoded, NoMask())  # the other kinds do not need one


# ------------------------------------------------------------------ sequential


def test_sequential_with_p_one_leaves_one_masked_token(tokenizer):
    encoded = _encode(tokenizer, TEXTS)
    out = _apply(TokenNoise("sequential", p=1.0), encoded, tokenizer)
    cls, sep, pad, mask = (
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
        tokenizer.mask_token_id,
    )
    assert out["input_ids"].tolist() == [[cls, mask, sep], [cls, mask, sep], [cls, sep, pad], [cls, mask, sep]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]]


def test_sequential_runs_every_step(tokenizer):
    encoded = _encode(tokenizer, _random_texts(64, seed=4))
    before = _real(encoded["input_ids"], encoded["attention_mask"])
    out = _apply(TokenNoise("sequential", p=0.2), encoded, tokenizer, seed=6)
    after = _real(out["input_ids"], out["attention_mask"])
    assert sum(map(len, after)) < sum(map(len, before))  # deleted
    tokens = [t for row in after for t in row]
    assert tokenizer.mask_token_id in tokens  # masked
    vocab = {t for row in before for t in row}
    assert any(t not in vocab and t != tokenizer.mask_token_id for t in tokens)  # replaced


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "often"])
def test_p_outside_zero_one_is_an_error(p):
    with pytest.raises(ValueError, match="p must be"):
        TokenNoise("shuffle", p=p)


def test_unknown_kind_and_options_are_errors():
    with pytest.raises(ValueError, match="unknown token noise kind 'swap'"):
        TokenNoise("swap")
    with pytest.raises(ValueError, match="unknown token noise option"):
        TokenNoise.from_config({"kind": "mask", "prob": 0.2})
    with pytest.raises(TypeError):
        TokenNoise.from_config(0.1)


def test_config_and_from_config():
    noise = TokenNoise("delete", p=0.2, seed=3)
    assert noise.config() == {"kind": "delete", "p": 0.2, "seed": 3}
    assert TokenNoise.from_config(noise.config()) == noise
    assert TokenNoise.from_config(noise) is noise
    assert TokenNoise.from_config(None) is None and TokenNoise.from_config("  ") is None
    assert TokenNoise.from_config("mask") == TokenNoise("mask", p=0.1, seed=0)
    assert TokenNoise.from_config({"kind": "replace"}) == TokenNoise("replace")
    assert TokenNoise.from_config('{"kind": "mask", "p": 0.2}') == TokenNoise("mask", p=0.2)
    assert TokenNoise() == TokenNoise("shuffle", p=0.1, seed=0)  # the default: shuffle, p = 0.1


# ------------------------------------------------------------------ the collator


CORPUS = {f"d{i}": f"text of document {i} with some words to perturb here" for i in range(1, 8)}


def _row(qid, doc_ids, labels, teacher=()):
    return canonical_row(qid, doc_ids, labels, teacher, query=f"which question is {qid} about today")


ROWS = [
    _row("q1", ["d1", "d4", "d2"], [1, 2, 0]),
    _row("q2", ["d3", "d4", "d2"], [1, 0, 0], teacher=[0.9, 0.5, 0.1]),
    _row("q3", ["d5", "d6", "d6"], [1, 0, 0]),
]


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0))
    return a == b


@pytest.mark.parametrize("kind", KINDS)
def test_collator_noises_only_the_student_inputs(tokenizer, kind):
    clean = RetrievalCollator(tokenizer, CORPUS, group_size=3)(ROWS)
    noisy = RetrievalCollator(tokenizer, CORPUS, group_size=3, student_noise={"kind": kind, "p": 0.5})(ROWS)
    assert clean.keys() == noisy.keys()
    for key in clean:
        if key not in ("query", "document"):
            assert _same(clean[key], noisy[key]), key  # texts, targets, teacher, ids: all clean
    for side in ("query", "document"):
        assert noisy[side].keys() == clean[side].keys()  # no special_tokens_mask reaches the model
        assert "special_tokens_mask" not in noisy[side]
        assert not torch.equal(noisy[side]["input_ids"], clean[side]["input_ids"])
        assert {v.shape for v in noisy[side].values()} == {noisy[side]["input_ids"].shape}


def test_collator_noise_is_deterministic_in_seed_epoch_and_query_ids(tokenizer):
    def noisy_queries(epoch=0, seed=0, rows=ROWS):
        noise = {"kind": "mask", "p": 0.5, "seed": seed}
        collator = RetrievalCollator(tokenizer, CORPUS, group_size=3, student_noise=noise)
        collator.set_epoch(epoch)
        return collator(rows)["query"]["input_ids"]  # the query texts are the same whatever the epoch

    first = noisy_queries()
    assert torch.equal(noisy_queries(), first)  # a fresh collator (e.g. a resumed run) sees the same noise
    assert torch.equal(noisy_queries(epoch=3), noisy_queries(epoch=3))
    assert not torch.equal(noisy_queries(epoch=1), first)
    assert not torch.equal(noisy_queries(seed=1), first)
    assert not torch.equal(noisy_queries(rows=[{**row, "query_id": row["query_id"] + "x"} for row in ROWS]), first)


class _WithoutOffsets:
    """A tokenizer that gives no offsets (as a slow, pure-Python one)."""

    is_fast = False

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __call__(self, *args, return_offsets_mapping=False, **kwargs):
        assert not return_offsets_mapping, "offsets asked of a tokenizer without them"
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("fast", [True, False])
def test_prefix_tokens_are_left_alone(tiny_model_path, fast):
    """A query/document prefix is an instruction, not text: mask noise with p = 1 masks every token of the text and
    none of the prefix's (found by offsets with a fast tokenizer, by count with a slow one)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    if not fast:
        tokenizer = _WithoutOffsets(tokenizer)
    noisy = RetrievalCollator(
        tokenizer, CORPUS, group_size=3, query_prefix="query: ", student_noise={"kind": "mask", "p": 1.0}
    )(ROWS)["query"]
    clean = RetrievalCollator(tokenizer, CORPUS, group_size=3, query_prefix="query: ")(ROWS)["query"]
    assert set(noisy) == set(clean)  # no offsets or special_tokens_mask reach the model
    prefix = tokenizer("query: ", add_special_tokens=False)["input_ids"]
    assert len(prefix) == 2
    for ids, clean_ids, mask in zip(noisy["input_ids"], clean["input_ids"], clean["attention_mask"]):
        length = int(mask.sum())
        text_length = length - 2 - len(prefix)  # [CLS] prefix text [SEP]
        expected = [tokenizer.cls_token_id, *prefix, *[tokenizer.mask_token_id] * text_length, tokenizer.sep_token_id]
        assert ids[:length].tolist() == expected and clean_ids[1:3].tolist() == prefix
    documents = RetrievalCollator(
        tokenizer, CORPUS, group_size=3, query_prefix="query: ", student_noise={"kind": "mask", "p": 1.0}
    )(ROWS)["document"]
    real = documents["attention_mask"].bool() & ~torch.isin(
        documents["input_ids"], torch.tensor(tokenizer.all_special_ids)
    )
    assert not real.any()  # no document prefix: every text token of the documents is masked


def test_collator_without_noise_asks_for_no_special_tokens_mask(tokenizer):
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=3)
    assert collator.student_noise is None
    out = collator(ROWS)
    assert "special_tokens_mask" not in out["query"] and "special_tokens_mask" not in out["document"]


def test_a_bi_encoder_trains_on_noisy_batches(tmp_path, tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path)
    collator = RetrievalCollator.for_model(model, CORPUS, group_size=3, student_noise="delete")
    assert collator.student_noise == TokenNoise("delete")
    batch = collator(ROWS)
    outputs = model(query=batch["query"], document=batch["document"])
    assert outputs["query_embeddings"].shape[0] == 3

    rows = datasets.Dataset.from_list(ROWS * 4, features=ROW_FEATURES)
    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=3,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        group_size=3,
        model_card=False,
        student_noise='{"kind": "sequential", "p": 0.2}',
    )
    trainer = RetrievalTrainer(model, args, train_dataset=rows, corpus=CORPUS)
    assert trainer.data_collator.student_noise == TokenNoise("sequential", p=0.2)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(v) for v in losses)


# ------------------------------------------------------------------ the trainer arguments


def _args(tmp_path, **overrides):
    return RetrievalTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **overrides)


def test_training_arguments_parse_student_noise(tmp_path, tiny_model_path):
    assert _args(tmp_path).student_noise is None
    args = _args(tmp_path, student_noise='{"kind": "mask", "p": 0.2}')
    assert args.student_noise == {"kind": "mask", "p": 0.2}
    assert _args(tmp_path, student_noise="delete").student_noise == "delete"
    assert _args(tmp_path, student_noise={"kind": "replace"}).student_noise == {"kind": "replace"}
    assert _args(tmp_path, student_noise="").student_noise is None
    collator = default_collator(BiEncoder.from_pretrained(tiny_model_path), CORPUS, args)
    assert collator.student_noise == TokenNoise("mask", p=0.2)
    with pytest.raises(ValueError, match="p must be"):
        _args(tmp_path, student_noise='{"kind": "mask", "p": 2}')
    with pytest.raises(ValueError, match="unknown token noise kind"):
        _args(tmp_path, student_noise="scramble")


def test_student_noise_with_a_reranker_is_an_error(tmp_path, tokenizer):
    reranker = CrossEncoder(BertForSequenceClassification(tiny_bert_config(num_labels=1)), tokenizer)
    assert default_collator(reranker, CORPUS, _args(tmp_path)).student_noise is None
    with pytest.raises(ValueError, match="bi-encoders only"):
        default_collator(reranker, CORPUS, _args(tmp_path, student_noise="mask"))
