"""Two gloo processes with half the batch each give the loss and gradients of one process with the whole batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_robust_ir.callbacks import LossScheduleCallback
from hf_robust_ir.data.collator import RetrievalCollator
from hf_robust_ir.losses import GuideMaskedLoss, InfoNCELoss
from hf_robust_ir.modeling import BiEncoder
from hf_robust_ir.trainer import loss_from_embeddings

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).parent / "distributed" / "ddp_worker.py"
sys.path.insert(0, str(WORKER.parent))
from ddp_worker import guide_embeddings  # noqa: E402


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _rows():
    """8 queries with 1 positive + 3 hard negatives each. Documents repeat across queries (and across the two halves):
    q0's positive d0 is a hard negative of q5 (other half); d20 is a negative of q1 and q6; q3 has a second positive
    d9 that arrives as q4's hard negative."""
    corpus = {f"d{i}": f"passage {i} on subject {i % 4} with words " + "x " * (i % 5) for i in range(30)}
    rows = []
    for i in range(8):
        doc_ids = [f"d{i}", f"d{10 + i}", f"d{20 + i % 5}", f"d{(i + 5) % 8}"]
        labels = [1.0, 0.0, 0.0, 0.0]
        if i == 3:
            doc_ids.append("d9")
            labels.append(1.0)
        if i == 4:
            doc_ids[1] = "d9"
        rows.append(
            {
                "query_id": f"q{i}",
                "query": f"question about subject {i % 4} number {i}",
                "doc_ids": doc_ids,
                "labels": labels,
                "teacher_scores": [],
                "label_source": ["qrels"] * len(doc_ids),
            }
        )
    return rows, corpus


@pytest.mark.parametrize("loss_name", ["infonce", "infonce_uneven", "guide_masked", "guide_masked_weakening"])
def test_two_processes_match_one_process(tmp_path, no_dropout_model_path, tiny_model_path, loss_name):
    """InfoNCE, GuideMaskedLoss whose guide (another random model) scores the gathered candidates too, and the same
    around label weakening, whose logged statistics must cover both processes' queries, as one process's do.
    ``infonce_uneven``: two of the first process's four queries have no positive, so it counts 2 queries and the
    other 4; the loss must still be the mean over the 6, not the mean of the two processes' means."""
    no_dropout_model = no_dropout_model_path
    rows, corpus = _rows()
    if loss_name == "infonce_uneven":
        for row in rows[:2]:
            row["labels"] = [0.0] * len(row["labels"])
    group_size = 4
    torch.save((rows, corpus, group_size), tmp_path / "rows.pt")

    model = BiEncoder.from_pretrained(no_dropout_model)
    batch = RetrievalCollator.for_model(model, corpus, group_size=group_size)(rows)
    assert len(batch["doc_ids"]) < sum(min(group_size, len(r["doc_ids"])) for r in rows)  # repeats were merged
    loss_module, guide_args = InfoNCELoss(), []
    if loss_name.startswith("guide_masked"):
        kwargs = {"margin": 0.0}
        if loss_name == "guide_masked_weakening":
            kwargs.update(inner="label_weakening", inner_kwargs={"margin": 0.0})
        loss_module = GuideMaskedLoss(**kwargs)
        guide_args = ["--loss", "guide_masked", "--loss_kwargs", json.dumps(kwargs), "--guide", tiny_model_path]
        batch.update(guide_embeddings(BiEncoder.from_pretrained(tiny_model_path), batch))
        guide_scores = batch["guide_query_embeddings"] @ batch["guide_document_embeddings"].T
        masked = loss_module.guide_mask(guide_scores, batch["labels"], batch["mask"].bool())
        assert (batch["mask"].bool() & ~masked).any()  # the guide does mask some candidates here
    out = model(query=batch["query"], document=batch["document"])
    queries, documents = out["query_embeddings"], out["document_embeddings"]
    loss = loss_from_embeddings(loss_module, model.similarity, queries, documents, batch)
    loss.backward()
    reference = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    logged = LossScheduleCallback(loss_module).log_values()
    if loss_name.startswith("guide_masked"):
        # the two processes compute the embeddings in other batch shapes (differences of ~1e-7): no mask or
        # plausible-set decision of this batch may lie that close to its threshold, or the comparison is a coin toss
        for shift in (-1e-4, 1e-4):
            shifted = {**kwargs, "margin": kwargs["margin"] + shift}
            if "inner_kwargs" in kwargs:
                shifted["inner_kwargs"] = {"margin": shift}
            other = GuideMaskedLoss(**shifted)
            loss_from_embeddings(other, model.similarity, queries.detach(), documents.detach(), batch)
            assert LossScheduleCallback(other).log_values() == pytest.approx(logged, abs=1e-9), shift

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    worker = [str(WORKER), "--model", no_dropout_model, "--rows", str(tmp_path / "rows.pt")]
    command = launcher + worker + ["--out", str(tmp_path / "ddp.pt"), *guide_args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt")
    assert ddp["world"] == 2
    assert ddp["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert set(ddp["grads"]) == set(reference)
    for name, grad in reference.items():
        torch.testing.assert_close(ddp["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert ddp["stats"] == pytest.approx(logged, abs=1e-9)
    if loss_name == "guide_masked_weakening":
        assert {"guide_masked_per_query", "plausible_set_size", "outranked_fraction"} <= set(logged)
        # rank 0's own queries give other values: the log is not one process's view
        assert ddp["local_stats"] != pytest.approx(logged, abs=1e-9)


def test_corpus_encoding_is_sharded_and_merged(tmp_path, no_dropout_model_path):
    """Two processes each encode half of every chunk; both end with the index one process builds alone."""
    import numpy as np

    from hf_robust_ir.evaluation import DocumentIndex

    worker = Path(__file__).parent / "distributed" / "index_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    command += [str(worker), no_dropout_model_path, str(tmp_path / "rank")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    corpus = {f"d{i}": f"passage {i} on subject {i % 4} " + "word " * (i % 9) for i in range(31)}
    model = BiEncoder.from_pretrained(no_dropout_model_path).eval()
    single = DocumentIndex.from_corpus(model, corpus, batch_size=4, chunk_size=7, show_progress_bar=False)
    expected = single.index.reconstruct_n(0, single.index.ntotal)
    encoded = []
    for rank in (0, 1):
        saved = np.load(tmp_path / f"rank{rank}.npz")
        assert list(saved["ids"]) == single.doc_ids == list(corpus)
        np.testing.assert_allclose(saved["vectors"], expected, atol=1e-5)
        encoded.append(int(saved["encoded"]))
    # four chunks of 7 split 3/4 and the last chunk of 3 split 1/2, the shorter share padded by one text: both
    # processes make the same number of forward calls (a sharded model hangs otherwise)
    assert encoded == [4 * 4 + 2, 4 * 4 + 2]


def test_close_process_group_tears_down_an_initialized_group(tmp_path):
    """The train command ends a distributed run with a barrier and ``destroy_process_group``; without a group it does
    nothing."""
    import torch.distributed as dist

    from hf_robust_ir.commands.common import close_process_group

    close_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()


def test_streamed_rows_train_under_two_processes_each_on_its_share(tmp_path, no_dropout_model_path):
    """A datasets.IterableDataset under torchrun: accelerate's default would build every batch on the main process
    and slice it along the first dimension, which a retrieval batch does not allow; each process collates its share."""
    worker = Path(__file__).parent / "distributed" / "stream_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    command += [str(worker), no_dropout_model_path, str(tmp_path / "rank")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2]
    # two steps of 4 rows per process: the two processes hold 16 different rows, in stream order
    assert sorted(seen[0]["queries"] + seen[1]["queries"], key=lambda q: int(q[1:])) == [f"q{i}" for i in range(16)]
