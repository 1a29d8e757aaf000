"""One process of the streamed-training test: RetrievalTrainer on a datasets.IterableDataset under torchrun."""

import json
import sys

import datasets
import torch.distributed as dist

from hf_robust_ir.modeling import BiEncoder
from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments


def main(model_path: str, out_prefix: str) -> None:
    corpus = {f"d{i}": f"passage {i} about topic {i % 4}" for i in range(40)}
    rows = [
        {"query_id": f"q{i}", "query": f"topic {i % 4} question {i}", "doc_ids": [f"d{i}", f"d{i + 10}"],
         "labels": [1.0, 0.0], "teacher_scores": [], "label_source": ["qrels"] * 2}
        for i in range(16)
    ]  # fmt: skip
    args = RetrievalTrainingArguments(
        output_dir=f"{out_prefix}run", per_device_train_batch_size=4, max_steps=2, group_size=2, report_to="none",
        save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    trainer = RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, train_dataset=stream, corpus=corpus)
    seen = []
    original = trainer.compute_loss

    def recording(model, inputs, **kwargs):
        seen.extend(f"q{text.rsplit(' ', 1)[1]}" for text in inputs["query_texts"])
        return original(model, inputs, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    with open(f"{out_prefix}{dist.get_rank()}.json", "w") as handle:
        json.dump({"world": dist.get_world_size(), "queries": seen}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
