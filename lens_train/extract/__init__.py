"""Model surgery from the logged graph: ``lt.Extract`` sub-models (``lt.get_nodes`` lists the node labels).

Example:
    >>> import torch, lens_train as lt
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> features = lt.Extract(model, torch.ones(1, 4), node_out="relu_1_2")
    >>> features(torch.ones(3, 4)).shape
    torch.Size([3, 8])
"""

from .submodel import Extract, ExtractSummary

__all__ = ["Extract", "ExtractSummary"]
