"""all_gather_varlen (src.utils.distributed), used by the XBM memory and the retrieval callback: 2 gloo
processes with different batch lengths get every rank's rows, in rank order, without the padding."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from src.utils.distributed import all_gather_varlen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x = torch.full((rank + 2, 3), float(rank))  # rank 0: 2 rows, rank 1: 3 rows
        torch.save(all_gather_varlen(x), f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_one_process_returns_the_input():
    x = torch.arange(6).view(3, 2)
    assert all_gather_varlen(x) is x


def test_two_ranks_of_different_lengths(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = torch.cat([torch.zeros(2, 3), torch.ones(3, 3)])
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"{rank}.pt"), expected)
