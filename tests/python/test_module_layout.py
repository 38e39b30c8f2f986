"""The package's module layout: ``ampkit.autocast`` is the region class and the module behind it,
``ampkit.autocasting``, is importable by its own name (it used to be shadowed by the class, which
forced function-level imports in trainer.py and self_check.py). And ``ampkit.nn`` checks
activation names with the op's own C++ check, not a copy of the rule.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import types

import pytest
import torch

import ampkit
import ampkit.autocasting
from ampkit import self_check, trainer


def test_autocasting_is_a_module_and_autocast_the_class():
    module = importlib.import_module("ampkit.autocasting")
    assert isinstance(module, types.ModuleType)
    assert module is ampkit.autocasting
    assert isinstance(ampkit.autocast, type)
    assert ampkit.autocast is module.autocast
    for name in ("Policy", "explain", "global_policy", "set_global_policy", "set_module_policy"):
        assert getattr(ampkit, name) is getattr(module, name)


def test_install_helpers_on_the_class_are_the_module_functions():
    # Plain staticmethods of the module's functions (no lambda forwarding to a shadowed module).
    assert ampkit.autocast.uninstall is ampkit.autocasting.uninstall
    assert ampkit.autocast.is_installed is ampkit.autocasting.is_installed
    assert ampkit.autocast.is_installed("cpu") in (True, False)


@pytest.mark.parametrize("module", [trainer, self_check], ids=["trainer", "self_check"])
def test_trainer_and_self_check_import_autocast_at_top_level(module):
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # Optional third-party imports (tqdm, matplotlib) may stay lazy; the package's own may not.
            own = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                   and (n.level > 0 or (n.module or "").startswith("ampkit"))]
            own += [n for n in ast.walk(node) if isinstance(n, ast.Import)
                    and any(alias.name.startswith("ampkit") for alias in n.names)]
            assert not own, f"{module.__name__}.{node.name} imports from ampkit inside the function"
    assert any(value is ampkit.autocast for value in vars(module).values())


def test_activation_names_come_from_the_op():
    assert ampkit.nn.ACTIVATIONS == ("none", "relu", "gelu")
    assert ampkit._native.fused_linear_activations() == ampkit.nn.ACTIVATIONS


def test_fused_linear_module_rejects_an_activation_with_the_op_message():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError) as from_op:
        ampkit.fused_linear(x, w, None, "swish")
    with pytest.raises(ValueError) as from_module:
        ampkit.FusedLinear(4, 5, activation="swish")
    with pytest.raises(ValueError) as from_linear:
        ampkit.FusedLinear.from_linear(torch.nn.Linear(4, 5), activation="swish")
    rule = ": activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got 'swish'"
    assert "ampkit.fused_linear" + rule in str(from_op.value)
    assert "FusedLinear" + rule in str(from_module.value)
    assert "FusedLinear" + rule in str(from_linear.value)
    with pytest.raises(TypeError, match="FusedLinear: activation must be a str, got NoneType"):
        ampkit.FusedLinear(4, 5, activation=None)


REPO = pathlib.Path(__file__).resolve().parents[2]


def _sources(folder: str) -> dict:
    root = REPO / folder
    return {path.relative_to(REPO).as_posix(): path.read_text() for path in sorted(root.glob("*.*"))}


def test_the_autocast_layer_names_no_op_and_the_bindings_use_the_public_header():
    # Ops declare themselves self-routed (ampkit/autocast_self_routed.h); the autocast layer
    # learns their names at run time.
    for path, text in _sources("csrc/autocast").items():
        assert "ampkit::fused" not in text, f"{path} names an ampkit op"
        assert '"ops/fused' not in text, f"{path} includes an op header"
    for path, text in _sources("csrc/python").items():
        assert "autocast/routing.h" not in text and "autocast/registry.h" not in text, path
    for path, text in _sources("csrc/ops").items():
        assert '"autocast/' not in text, f"{path} includes an internal autocast header"
        assert len(text.splitlines()) <= 450, f"{path} has {len(text.splitlines())} lines"
