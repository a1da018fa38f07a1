"""domains.csv (docs/log-format.md §5): written at every validation of a run on labelled data, with the right
totals; no file for unlabelled data; the same totals under two gloo processes."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
from sb_runlog import domain_expert_nmi
from train_helpers import launch, only_run_dir, smoke_config, smoke_overrides

from sb_data import ValidationLoader
from sb_train.config import ConfigError
from sb_train.trainer import Trainer

# two steps; validations at step 0 (one live expert) and step 2 (two live): with top-2, the second choice is
# unserved at step 0 and served at step 2
SHORT = ("schedule.num_iterations=2", "run.val_loss_every=2", "run.checkpoint_every=0", "model.bank.topk=2",
         "run.warmup_steps=0")


def _read_domains(run_dir):
    table = defaultdict(dict)  # (step, layer) -> {(domain, expert): tokens}
    nmi = {}
    with open(run_dir / "domains.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (int(row["step"]), int(row["layer"]))
            table[key][(row["domain"], int(row["expert"]))] = int(row["tokens"])
            nmi[key] = float(row["nmi"]) if row["nmi"] else None
    return table, nmi


def _domain_tokens(cfg, world_size=1):
    """Tokens of each domain among the measured validation tokens (counted from sb-data's labels)."""
    d = cfg.data
    steps = max(1, d.domain_val_tokens // (world_size * d.val_seq_len))
    totals: dict[str, int] = defaultdict(int)
    for rank in range(world_size):
        loader = ValidationLoader(d.val_files, steps * world_size * d.val_seq_len, d.val_seq_len, rank=rank,
                                  world_size=world_size)
        labels = loader.domain_labels()
        for batch in labels.labels:
            for i, name in enumerate(labels.names):
                totals[name] += int(np.count_nonzero(batch == i))
    return dict(totals)


def _check_totals(table, domain_tokens, top_k_served):
    for (step, _layer), counts in table.items():
        for domain, n in domain_tokens.items():
            got = sum(v for (d, _e), v in counts.items() if d == domain)
            assert got == n * top_k_served[step], (step, domain)


def test_smoke_run_writes_domains_csv_with_two_domains(smoke_data, tmp_path):
    cfg = smoke_config(smoke_data, tmp_path, *SHORT)
    result = Trainer(cfg).run()
    assert result.state == "finished"
    run_dir = only_run_dir(tmp_path)
    table, nmi = _read_domains(run_dir)
    assert sorted({s for s, _ in table}) == [0, 2]
    assert sorted({layer for _, layer in table}) == list(range(cfg.model.num_layers))
    domain_tokens = _domain_tokens(cfg)
    assert set(domain_tokens) == {"code", "prose"} and min(domain_tokens.values()) > 0
    assert sum(domain_tokens.values()) == 2048  # data.domain_val_tokens of the smoke preset
    # step 0: one live expert, so only the first of the two choices is served; step 2: both are
    _check_totals(table, domain_tokens, {0: 1, 2: 2})
    for key, counts in table.items():
        grid = [[counts[(d, e)] for e in range(cfg.model.bank.num_experts)] for d in ("code", "prose")]
        assert nmi[key] == pytest.approx(domain_expert_nmi(grid), abs=1e-6)
        if key[0] == 0:
            assert nmi[key] == 0.0  # every assignment on expert 0: no specialisation


def test_unlabelled_validation_data_writes_no_domains_csv(smoke_data, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    for shard in smoke_data.glob("pydocs_*.bin"):
        (plain / shard.name).symlink_to(shard)  # the shards without their side files
    cfg = smoke_config(plain, tmp_path / "runs", "schedule.num_iterations=1", "run.val_loss_every=0",
                       "run.checkpoint_every=0", "run.warmup_steps=0")
    assert Trainer(cfg).run().state == "finished"
    run_dir = only_run_dir(tmp_path / "runs")
    assert (run_dir / "scalars.csv").exists() and not (run_dir / "domains.csv").exists()
    err = capsys.readouterr().err
    assert err.count("carry no domain labels") == 1


@pytest.mark.slow
def test_two_gloo_processes_sum_the_counts_of_both_ranks(smoke_data, tmp_path):
    out = tmp_path / "runs"
    args = ["--preset", "smoke", *[a for o in smoke_overrides(smoke_data, out, *SHORT) for a in ("--set", o)]]
    results = launch(args, tmp_path, world_size=2)
    assert all(r.returncode == 0 for r in results), results[0].stdout[-3000:]
    table, _ = _read_domains(only_run_dir(out))
    cfg = smoke_config(smoke_data, out, *SHORT)
    domain_tokens = _domain_tokens(cfg, world_size=2)
    assert sum(domain_tokens.values()) == 2048
    _check_totals(table, domain_tokens, {0: 1, 2: 2})


def test_dense_model_measures_nothing(smoke_data, tmp_path, capsys):
    cfg = smoke_config(smoke_data, tmp_path, 'model.ffn="dense"', "schedule.num_iterations=1",
                       "run.val_loss_every=0", "run.checkpoint_every=0", "run.warmup_steps=0")
    trainer = Trainer(cfg)
    assert trainer.domains is None
    assert trainer.run().state == "finished"
    assert not (only_run_dir(tmp_path) / "domains.csv").exists()
    assert "domain labels" not in capsys.readouterr().err


def test_more_domain_tokens_than_the_validation_data_is_a_config_error(smoke_data, tmp_path):
    cfg = smoke_config(smoke_data, tmp_path, "data.domain_val_tokens=100000000")
    with pytest.raises(ConfigError, match=r"data.domain_val_tokens = 100,000,000: .*lower num_tokens"):
        Trainer(cfg)


def test_layer_moe_counts_each_layers_own_experts(smoke_data, tmp_path):
    """layer_moe matched on total parameters gives each of the 4 layers E/4 = 2 of 8 experts: domains.csv
    names only a layer's own experts, and the totals are those of the bank (top-1, every token served)."""
    cfg = smoke_config(smoke_data, tmp_path, 'model.ffn="layer_moe"', 'model.layer_moe_match="total"',
                       "model.bank.num_experts=8", "model.bank.topk=1", "schedule.num_iterations=2",
                       "run.val_loss_every=2", "run.checkpoint_every=0", "run.warmup_steps=0")
    assert cfg.model.experts_per_layer == 2
    assert Trainer(cfg).run().state == "finished"
    table, _ = _read_domains(only_run_dir(tmp_path))
    assert table and all({e for _d, e in counts} == {0, 1} for counts in table.values())
    _check_totals(table, _domain_tokens(cfg), {0: 1, 2: 1})


def test_unlabelled_validation_data_smaller_than_the_budget_is_not_an_error(smoke_data, tmp_path, capsys):
    """Without side files nothing is measured, so the domain budget is not checked against the shards."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for shard in smoke_data.glob("pydocs_*.bin"):
        (plain / shard.name).symlink_to(shard)
    cfg = smoke_config(plain, tmp_path / "runs", "data.domain_val_tokens=100000000",
                       "schedule.num_iterations=1", "run.val_loss_every=0", "run.checkpoint_every=0",
                       "run.warmup_steps=0")
    trainer = Trainer(cfg)
    assert trainer.domains is None
    assert capsys.readouterr().err.count("carry no domain labels") == 1
