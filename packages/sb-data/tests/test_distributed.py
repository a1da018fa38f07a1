import json

import pytest
import torch.multiprocessing as mp
from sbdata_helpers import gloo_loader_worker, write_stream_shards

from sb_data.loader import DistributedTokenLoader


@pytest.mark.timeout(180)
def test_two_gloo_ranks_read_disjoint_data(tmp_path):
    files = [str(p) for p in write_stream_shards(tmp_path / "data", [23, 30])]
    out = tmp_path / "gathered.json"
    mp.start_processes(
        gloo_loader_worker,
        args=(2, str(tmp_path / "store"), files, str(out)),
        nprocs=2,
        start_method="fork",
    )
    gathered = json.loads(out.read_text())
    assert [(g["rank"], g["world"]) for g in gathered] == [(0, 2), (1, 2)]
    for r, g in enumerate(gathered):  # each rank saw what the in-process simulation of that rank sees
        sim = DistributedTokenLoader(files, 5, rank=r, world_size=2)
        assert g["inputs"] == [next(sim)[0].tolist() for _ in range(4)]
    seen = [t for g in gathered for batch in g["inputs"] for t in batch]
    assert len(seen) == len(set(seen)) == 2 * 4 * 5
