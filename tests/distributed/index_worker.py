"""One process of the sharded-encoding test: build a corpus index under torchrun and save what it holds."""

import sys

import numpy as np
import torch.distributed as dist

from hf_robust_ir.evaluation import DocumentIndex
from hf_robust_ir.modeling import BiEncoder


def main(model_path: str, out_prefix: str) -> None:
    dist.init_process_group("gloo")
    corpus = {f"d{i}": f"passage {i} on subject {i % 4} " + "word " * (i % 9) for i in range(31)}
    model = BiEncoder.from_pretrained(model_path).eval()
    encoded = []
    encode = model.encode_documents

    def counting_encode(texts, **kwargs):
        encoded.extend(texts)
        return encode(texts, **kwargs)

    model.encode_documents = counting_encode
    index = DocumentIndex.from_corpus(model, corpus, batch_size=4, chunk_size=7, show_progress_bar=False)
    vectors = index.index.reconstruct_n(0, index.index.ntotal)
    np.savez(f"{out_prefix}{dist.get_rank()}.npz", ids=np.array(index.doc_ids), vectors=vectors, encoded=len(encoded))
    dist.barrier()  # no process exits while the other still receives (gloo aborts then)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
