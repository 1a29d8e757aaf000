"""BiEncoder.forward_chunk_size: chunked, length-grouped forward passes give the same embeddings and gradients."""

from __future__ import annotations

import torch

from hf_robust_ir.modeling import BiEncoder

TEXTS = [
    "a short one",
    "a much longer document about protein folding and the structure of membranes in cells " * 3,
    "mid length text on vaccines",
    "x",
    "another fairly long passage, on the statistics of clinical trials and their sample sizes " * 2,
    "q",
    "seven words in this one, more or less",
]


def _embeddings_and_grad(model: BiEncoder, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    model.forward_chunk_size = chunk
    model.zero_grad(set_to_none=True)
    features = model.tokenize(TEXTS, "document")
    embeddings = model(document=features)["document_embeddings"]
    (embeddings * torch.arange(1.0, embeddings.shape[1] + 1)).sum().backward()
    grad = model.query_encoder.embeddings.word_embeddings.weight.grad.clone()
    return embeddings.detach(), grad


def test_chunked_forward_matches_one_pass(tiny_model_path):
    torch.manual_seed(0)
    model = BiEncoder.from_pretrained(tiny_model_path).eval()
    whole, whole_grad = _embeddings_and_grad(model, None)
    for chunk in (1, 2, 3, 16):
        chunked, chunked_grad = _embeddings_and_grad(model, chunk)
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(chunked_grad, whole_grad, atol=1e-5, rtol=1e-4)


def test_trainer_argument_sets_chunk_size(tiny_model_path, tmp_path):
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    model = BiEncoder.from_pretrained(tiny_model_path)
    args = RetrievalTrainingArguments(output_dir=str(tmp_path), forward_chunk_size=16, report_to="none")
    RetrievalTrainer(model=model, args=args, corpus={"d": "text"})
    assert model.forward_chunk_size == 16
