"""The Informer teacher and student, their dataset, training and evaluation (torch, offline).

Import the submodules directly (``barsignal.model.informer``, ``barsignal.model.checkpoint``);
this package file imports nothing so that CLI modules can be loaded without torch.
"""
