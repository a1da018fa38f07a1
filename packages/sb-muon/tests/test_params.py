"""Which parameters go to Muon and which to AdamW: names, nn.Embedding, the output layer of a Sequential."""

import torch
from torch import nn

from sb_muon import split_muon_params
from sb_muon.params import output_layer


def _names(pairs):
    return [n for n, _ in pairs]


def test_unnamed_sequential_head_goes_to_adamw():
    model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16),
                          nn.Linear(16, 100), nn.Dropout(0.1))
    muon, other = split_muon_params(model)
    assert _names(muon) == ["1.weight", "3.weight"]
    assert set(_names(other)) == {"0.weight", "1.bias", "3.bias", "4.weight", "4.bias"}
    assert output_layer(model) is model[4]


def test_nested_sequential_and_composite_tails():
    inner = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Flatten(), inner), nn.Softmax(-1))
    assert output_layer(model) is inner[2]
    assert "1.1.2.weight" not in _names(split_muon_params(model)[0])

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

    # a composite last block is not an output layer: its order inside is forward's business
    assert output_layer(nn.Sequential(nn.Linear(8, 8), Block())) is None
    assert output_layer(Block()) is None  # not a Sequential: names or adamw= decide


def test_custom_model_head_named_explicitly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 8)
            self.out = nn.Linear(8, 5)

        def forward(self, x):
            return self.out(torch.relu(self.body(x)))

    net = Net()
    assert _names(split_muon_params(net)[0]) == ["body.weight", "out.weight"]
    muon, other = split_muon_params(net, adamw=[net.out])
    assert _names(muon) == ["body.weight"] and "out.weight" in _names(other)
    muon, _ = split_muon_params(net, adamw=[net.body.weight])
    assert _names(muon) == ["out.weight"]


def test_names_and_tied_weights():
    model = nn.ModuleDict({"wte": nn.Embedding(10, 8), "h": nn.Linear(8, 8), "lm_head": nn.Linear(8, 10)})
    model["lm_head"].weight = model["wte"].weight  # tied: listed once
    muon, other = split_muon_params(model)
    assert _names(muon) == ["h.weight"]
    assert _names(other).count("wte.weight") == 1 and "lm_head.weight" not in _names(other)
