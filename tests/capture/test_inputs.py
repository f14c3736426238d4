"""One input rule everywhere: Hugging Face-style keyword inputs through every function that runs a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.capture.inputs import named_tensors, normalize_inputs
from lens_train.errors import InputMismatchError, InvalidArgumentError
from tests.models import EncoderOutput, TinyHFEncoder, hf_inputs


@pytest.fixture()
def hf() -> tuple[TinyHFEncoder, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return TinyHFEncoder().eval(), hf_inputs()


def test_log_forward_pass_with_input_kwargs_only(hf) -> None:
    model, inputs = hf
    expected = model(**inputs)
    log = lt.log_forward_pass(model, None, input_kwargs=inputs)
    assert isinstance(log.output, EncoderOutput)
    assert torch.equal(log.output.logits, expected.logits)
    assert log.input_layers == ["input_1_0", "input_2_1"]  # in input_kwargs order
    assert torch.equal(log["input_1_0"].activation, inputs["input_ids"])
    assert torch.equal(log["input_2_1"].activation, inputs["attention_mask"])
    assert torch.equal(log["classifier"].activation, expected.logits)
    assert torch.equal(log["norm"].activation, expected.last_hidden_state)
    # the additive mask really reached the scores: padded keys get ~0 attention weight
    (softmax,) = [layer for layer in log if layer.func_name == "softmax"]
    assert softmax.activation[1, :, :, -2:].abs().max() < 1e-6
    assert softmax.activation[0, :, :, -2:].min() > 0
    # the output dataclass's two fields are the two outputs
    assert [log[lab].parent_layers for lab in log.output_layers] == [["layernorm_1_30"], ["linear_3_37"]]


def test_empty_tuple_and_none_mean_no_positional_arguments(hf) -> None:
    model, inputs = hf
    a = lt.log_forward_pass(model, (), inputs, random_seed=0)
    b = lt.log_forward_pass(model, None, inputs, random_seed=0)
    assert a.layer_labels == b.layer_labels
    mixed = lt.log_forward_pass(model, inputs["input_ids"], {"attention_mask": inputs["attention_mask"]})
    assert mixed.layer_labels == a.layer_labels


def test_metadata_validation_and_graph_with_input_kwargs(hf, tmp_path: Path) -> None:
    model, inputs = hf
    meta = lt.get_model_metadata(model, None, inputs)
    assert meta.num_saved == 0 and meta["classifier"].tensor_shape == (2, 3)
    assert lt.validate_model_activations(model, None, inputs, random_seed=0)
    assert lt.validate_model_activations(model.train(), (), inputs, random_seed=0)
    out = lt.show_model_graph(model, None, inputs, vis_outpath=tmp_path / "hf", vis_save_only=True)
    assert out == tmp_path / "hf.svg"
    svg = out.read_text()
    assert "<svg" in svg and "classifier" in svg and "embedding" in svg


def test_every_other_model_runner_takes_input_kwargs(hf) -> None:
    model, inputs = hf
    nodes = lt.get_nodes(model, None, inputs)
    assert nodes[0].startswith("embedding_1") and nodes[-1].startswith("linear_")
    log = lt.log_forward_pass(model, None, inputs, layers_to_save=["classifier"])
    new = hf_inputs(batch=3)
    log.save_new_activations(model, None, new)
    assert torch.equal(log["classifier"].activation, model(**new).logits)
    recording = lt.fastlog.record(model, None, inputs, keep_op=lambda c: c.kind == "module" and c.module_class == "LayerNorm")
    assert torch.equal(recording[recording.labels[0]], model(**inputs).last_hidden_state)
    head = lt.Extract(model, None, inputs, node_out="classifier")
    assert torch.equal(head(inputs["input_ids"], inputs["attention_mask"]), model(**inputs).logits)


def test_unknown_keyword_names_the_closest_parameter(hf) -> None:
    model, inputs = hf
    bad = {"input_ids": inputs["input_ids"], "attention_msk": inputs["attention_mask"]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for run in (lt.log_forward_pass, lt.get_model_metadata, lt.validate_model_activations, lt.get_nodes):
        with pytest.raises(InputMismatchError, match=r"no parameter 'attention_msk'.*Closest: 'attention_mask'") as info:
            run(model, None, bad)
        assert isinstance(info.value, TypeError)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_var_keyword_forward_accepts_any_name() -> None:
    class Anything(nn.Module):
        def forward(self, x: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
            return x + sum(extra.values())

    log = lt.log_forward_pass(Anything(), torch.ones(2), {"whatever": torch.ones(2)})
    assert torch.equal(log[-1].activation, torch.full((2,), 2.0))


def test_input_kwargs_must_be_a_mapping() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input_kwargs must be a dict.*input_ids"):
        normalize_inputs(nn.Identity(), torch.ones(1), [torch.ones(1)])  # type: ignore[arg-type]


def test_list_rule() -> None:
    class OneList(nn.Module):
        def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(xs).sum(0)

    class TwoArgs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a - b

    a, b = torch.ones(2), torch.zeros(2)
    assert normalize_inputs(OneList(), [a, b]) == (([a, b],), {})  # one list argument
    assert normalize_inputs(TwoArgs(), [a, b]) == ((a, b), {})  # positional arguments
    assert normalize_inputs(OneList(), ([a],)) == (([a],), {})  # a tuple says it explicitly
    assert torch.equal(lt.log_forward_pass(TwoArgs(), [a, b])[-1].activation, a - b)


def test_named_tensors_paths() -> None:
    t = torch.ones(1)
    names = [name for name, _ in named_tensors((t, [t, {"k": t}]), {"mask": t, "n": 3})]
    assert names == ["args[0]", "args[1][0]", "args[1][1]['k']", "kwargs['mask']"]
