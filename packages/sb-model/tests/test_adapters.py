import torch

import sb_model as sm


def test_lazy_adapter_init_copies_the_mean_of_initialised_experts(make_bank):
    bank = make_bank(num_experts=4)
    before = bank.adapter_scale.detach().clone()
    bank.maybe_init_adapters(torch.tensor([True, True, False, False]))
    # nothing was initialised yet: the first experts keep their values and become initialised
    torch.testing.assert_close(bank.adapter_scale, before)
    assert bank.adapter_initialized.tolist() == [[True, True, False, False]] * 3
    bank.maybe_init_adapters(torch.tensor([True, True, True, False]))
    mean = before[:, :2].mean(dim=1)
    torch.testing.assert_close(bank.adapter_scale[:, 2], mean)
    torch.testing.assert_close(bank.adapter_scale[:, 3], before[:, 3])
    assert bank.adapter_initialized[:, 2].all() and not bank.adapter_initialized[:, 3].any()
    # already-initialised experts are never overwritten
    snapshot = bank.adapter_bias.detach().clone()
    bank.maybe_init_adapters(torch.tensor([True, True, True, False]))
    torch.testing.assert_close(bank.adapter_bias, snapshot)
    assert "adapter_initialized" in bank.state_dict()  # persistent: a resume keeps it


def test_expert_weights_layout_init_and_wd_mul(make_bank):
    cfg = sm.BankConfig(model_dim=32, num_layers=2, num_experts=3, ffn_hidden=64)
    bank = sm.SharedExpertBank(cfg)
    assert bank.w1.shape == (3, 64, 32) and bank.w2.shape == (3, 32, 64)
    assert bank.w1.wd_mul == 2.0 and bank.w2.wd_mul == 2.0
    bound = 3**0.5 * 0.5 / 32**0.5
    assert bank.w1.abs().max() <= bound and bank.w1.abs().max() > 0.9 * bound
    assert bank.w2.abs().max() == 0  # zero-init output projection: a new expert starts silent
    assert bank.router_w.shape == (2, 3, cfg.router_in_dim) and bank.router_b.abs().max() == 0
    assert cfg.router_in_dim == 2 * 32 + 11
    assert bank.adapter_scale.shape == (2, 3, 32)
    assert torch.equal(bank.adapter_scale, torch.ones(2, 3, 32))
    record = sm.BankConfig(model_dim=896, num_layers=28)
    assert record.router_in_dim == 1803  # docs/design/presets.md
