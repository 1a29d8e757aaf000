"""Run by ``torchrun --nproc_per_node 2``: each process holds half of the batch, computes the loss with cross-device
negatives under DDP, and rank 0 saves the averaged loss and the parameter gradients for comparison."""

import argparse
import json

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hf_robust_ir.callbacks import LossScheduleCallback
from hf_robust_ir.data.collator import RetrievalCollator
from hf_robust_ir.losses import get_loss
from hf_robust_ir.losses.base import stat_ratios
from hf_robust_ir.modeling import BiEncoder
from hf_robust_ir.trainer import loss_from_embeddings


def guide_embeddings(guide, batch) -> dict:
    """What RetrievalTrainer adds for a guide model: its embeddings of the batch's raw texts."""
    return {
        "guide_query_embeddings": torch.from_numpy(guide.encode_queries(batch["query_texts"])),
        "guide_document_embeddings": torch.from_numpy(guide.encode_documents(batch["document_texts"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", required=True, help="torch.save'd list of rows and the corpus")
    parser.add_argument("--out", required=True)
    parser.add_argument("--loss", default="infonce")
    parser.add_argument("--loss_kwargs", default="{}")
    parser.add_argument("--guide", default=None, help="guide model folder for losses that read guide scores")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows, corpus, group_size = torch.load(args.rows, weights_only=False)
    model = BiEncoder.from_pretrained(args.model)
    ddp_model = DistributedDataParallel(model)
    share = len(rows) // world
    batch = RetrievalCollator.for_model(model, corpus, group_size=group_size)(rows[rank * share : (rank + 1) * share])
    if args.guide:
        batch.update(guide_embeddings(BiEncoder.from_pretrained(args.guide), batch))
    out = ddp_model(query=batch["query"], document=batch["document"])
    loss_module = get_loss(args.loss, **json.loads(args.loss_kwargs))
    loss = loss_from_embeddings(
        loss_module, model.similarity, out["query_embeddings"], out["document_embeddings"], batch
    )
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    # what a training log gets: the loss's statistics over both halves (log_values all-reduces on every process)
    local_stats = stat_ratios(loss_module.stat_totals()) if hasattr(loss_module, "stat_totals") else {}
    logged = LossScheduleCallback(loss_module).log_values()
    if rank == 0:
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        saved = {"loss": mean_loss.item(), "grads": grads, "world": world, "stats": logged, "local_stats": local_stats}
        torch.save(saved, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
